//! The `load_subset` stage: read the source, draw the subset, and write one
//! images tensor (u8 `N×3×H×W`) and one labels tensor (i64 `N`) per split,
//! plus the `index` table (where every row came from) and the `classes`
//! table. Each split's images are decoded and written 64 MiB at a time,
//! so memory does not grow with the data set.

use std::path::Path;
use std::time::Instant;

use cairn_formats::{write_tensor, Column, DType, Table, TensorWriter};
use cairn_kinds::data::{LoadSubsetParams, Pool, SourceFormat};

use super::catalog::Catalog;
use super::source::SourceTree;
use super::{cifar, folder, subset, DataError, Item};
use crate::ctx::{StageError, StageResult, WorkerCtx};

pub fn load_subset(ctx: &mut WorkerCtx, params: LoadSubsetParams) -> StageResult {
    let source = ctx.input("source")?.to_path_buf();
    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(ctx.threads())
        .build()
        .map_err(|e| StageError::new(format!("cannot start decoding threads: {e}")))?;
    let scratch = ctx.scratch().to_path_buf();
    let mut catalog = pool.install(|| read_catalog(&source, params.format, &scratch))?;
    catalog.square = params.size;
    ctx.progress(format!(
        "{}: {} classes, {} train and {} test images",
        source.display(),
        catalog.classes.len(),
        catalog.train.len(),
        catalog.test.len()
    ));
    let picks = subset::pick(&catalog.classes, &catalog.train, &catalog.test, &params, ctx.seed())
        .map_err(|e| StageError::new(format!("{}: {e}", source.display())))?;

    let mut index = IndexTable::default();
    let splits = [
        ("train", &picks.train, &catalog.train, true),
        ("val", &picks.val, &catalog.train, params.val_count() > 0),
        ("test", &picks.test, &catalog.test, true),
        ("pool", &picks.pool, &catalog.train, params.pool != Pool::None),
    ];
    for (split, chosen, items, emitted) in splits {
        if !emitted {
            continue;
        }
        let rows: Vec<&Item> = chosen.iter().map(|&i| &items[i]).collect();
        let images = ctx.output(&format!("{split}_images"))?.to_path_buf();
        let labels = ctx.output(&format!("{split}_labels"))?.to_path_buf();
        pool.install(|| write_split(&catalog, &rows, &images, &labels, CHUNK_BYTES))?;
        index.add(split, &rows, &catalog.classes);
        ctx.metric(&format!("{split}_images"), rows.len() as f64);
        ctx.progress(format!("{split}: {} images", rows.len()));
    }
    index.into_table().write(ctx.output("index")?).map_err(DataError::from)?;
    let labels = (0..catalog.classes.len() as i64).collect();
    Table::new()
        .with("label", Column::I64(labels))
        .with("name", Column::Str(catalog.classes.clone()))
        .write(ctx.output("classes")?)
        .map_err(DataError::from)?;
    ctx.metric("seconds", started.elapsed().as_secs_f64());
    Ok(())
}

/// The catalog of `source`; the files it needs from a compressed archive
/// are first copied into `spill_dir` (see [`SourceTree::open`]).
pub(crate) fn read_catalog(source: &Path, format: SourceFormat, spill_dir: &Path) -> Result<Catalog, DataError> {
    let tree = SourceTree::open(source, spill_dir)?;
    match format {
        SourceFormat::Cifar10Binary => cifar::read(tree),
        SourceFormat::ImageFolder => folder::read(tree),
        SourceFormat::Auto if cifar::detect(&tree) => cifar::read(tree),
        SourceFormat::Auto => folder::read(tree),
    }
}

/// Rows decoded at a time (at least one): a split's pixels are written as
/// they come, never all in memory. The file is the same whatever the size,
/// since the writer cuts its own batches.
const CHUNK_BYTES: usize = 64 << 20;

pub(super) fn write_split(catalog: &Catalog, rows: &[&Item], images: &Path, labels: &Path, chunk_bytes: usize) -> Result<(), DataError> {
    let mut writer = TensorWriter::create(images, DType::U8, &catalog.image_shape())?;
    for chunk in rows.chunks((chunk_bytes / catalog.row_bytes()).max(1)) {
        writer.write_rows(&catalog.images(chunk)?)?;
    }
    writer.finish()?;
    let label_bytes: Vec<u8> = rows.iter().flat_map(|it| (it.label as i64).to_ne_bytes()).collect();
    write_tensor(labels, DType::I64, &[rows.len()], &label_bytes)?;
    Ok(())
}

/// Columns of the `index` table, one row per emitted image.
#[derive(Default)]
struct IndexTable {
    split: Vec<String>,
    position: Vec<i64>,
    label: Vec<i64>,
    class_name: Vec<String>,
    source: Vec<String>,
}

impl IndexTable {
    fn add(&mut self, split: &str, rows: &[&Item], classes: &[String]) {
        for (pos, item) in rows.iter().enumerate() {
            self.split.push(split.to_string());
            self.position.push(pos as i64);
            self.label.push(item.label as i64);
            self.class_name.push(classes[item.label].clone());
            self.source.push(item.source.clone());
        }
    }

    fn into_table(self) -> Table {
        Table::new()
            .with("split", Column::Str(self.split))
            .with("position", Column::I64(self.position))
            .with("label", Column::I64(self.label))
            .with("class_name", Column::Str(self.class_name))
            .with("source", Column::Str(self.source))
    }
}
