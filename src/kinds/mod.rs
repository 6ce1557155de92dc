//! The registry of stage kinds the engine can run. The library knows one
//! kind, the generic `command`, implemented here. Other kinds are declared
//! outside the engine (as [`crate::kind::Kind`]s) and run in the
//! `cairn-worker` process: the `cairn` binary registers the built-in ML
//! kinds of `cairn-kinds` with [`Registry::with_worker_kinds`].

pub mod command;
mod exit_hint;
mod overlap;
mod supervise;
pub mod worker_kind;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::kind::{Kind, StageKind};

/// Kinds by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn StageKind>>,
    /// The kinds run by the worker, name → version.
    worker_kinds: BTreeMap<String, u32>,
}

impl Registry {
    pub fn empty() -> Self {
        Self::default()
    }

    /// The kinds the engine itself implements: `command`.
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register(Arc::new(command::Command));
        r
    }

    /// Adds each declared kind, run by the `cairn-worker` process.
    pub fn with_worker_kinds(mut self, decls: impl IntoIterator<Item = &'static dyn Kind>) -> Self {
        for decl in decls {
            let info = decl.info();
            self.worker_kinds.insert(info.name.to_string(), info.version);
            self.register(Arc::new(worker_kind::WorkerKind::new(decl)));
        }
        self
    }

    /// The kinds run by the worker, name → version: what its probe must
    /// list (see [`crate::env::Environment::with_worker_kinds`]).
    pub fn worker_kinds(&self) -> &BTreeMap<String, u32> {
        &self.worker_kinds
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_knows_only_command_and_the_cli_adds_declared_kinds() {
        assert_eq!(Registry::builtin().names().collect::<Vec<_>>(), ["command"]);
        assert!(Registry::builtin().worker_kinds().is_empty());
        let all = Registry::builtin().with_worker_kinds(cairn_kinds::all());
        for decl in cairn_kinds::all() {
            let info = decl.info();
            assert_eq!(all.get(info.name).map(|k| k.version()), Some(info.version));
            assert_eq!(all.worker_kinds().get(info.name), Some(&info.version));
        }
        assert!(!all.worker_kinds().contains_key("command"));
    }
}
