//! The registry of stage kinds the engine can run: the generic `command`
//! kind, implemented here, and the built-in ML kinds declared in
//! `cairn-kinds` and executed by the `cairn-worker` process.

pub mod command;
mod supervise;
pub mod worker_kind;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::kind::StageKind;

/// Kinds by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn StageKind>>,
}

impl Registry {
    pub fn empty() -> Self {
        Self::default()
    }

    /// `command` plus every built-in ML kind.
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register(Arc::new(command::Command));
        for decl in cairn_kinds::all() {
            r.register(Arc::new(worker_kind::WorkerKind::new(decl)));
        }
        r
    }

    pub fn register(&mut self, kind: Arc<dyn StageKind>) {
        self.kinds.insert(kind.name().to_string(), kind);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn StageKind>> {
        self.kinds.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.kinds.keys().map(String::as_str)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn StageKind>> {
        self.kinds.values()
    }
}
