//! The `local` executor: this machine, in this process, as cairn always
//! ran stages. It needs no job directory and no [`super::Executor`]: the
//! runner calls the stage's kind directly (`crate::exec::execute`), and
//! [`super::Dispatch::stage`] leaves a local stage as it is. It is named
//! here so that every executor of `[executors]` has its file.

/// The executor a stage without `executor = "..."` runs on; a stage (or a
/// profile) may name it without declaring `[executors.local]`.
pub const DEFAULT: &str = "local";
