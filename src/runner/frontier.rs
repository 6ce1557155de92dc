//! Which pending stages a run looks at next. A stage is examined once,
//! when the last of its dependencies settles (done, failed, blocked or
//! would run), not after every event: rescanning every pending stage
//! whenever one finished made a 10,000-stage run quadratic, and a stale
//! stage waiting for a job slot asked the cache and the remote again each
//! time (BENCHMARKS.md "10,000 stages").

use std::collections::BTreeSet;

use crate::dag::Graph;

pub(super) struct Frontier {
    /// Each stage's selected users (the stages that read its outputs).
    users: Vec<Vec<usize>>,
    /// How many of each selected stage's dependencies have not settled.
    unsettled: Vec<usize>,
    /// Pending stages whose dependencies have all settled; the lowest index
    /// (first in topological order) first.
    examinable: BTreeSet<usize>,
}

impl Frontier {
    /// The frontier of a run that has settled nothing yet.
    pub fn new(graph: &Graph, selected: &BTreeSet<usize>) -> Self {
        let mut frontier = Self {
            users: graph.users(|i| selected.contains(&i)),
            unsettled: vec![0; graph.deps.len()],
            examinable: BTreeSet::new(),
        };
        frontier.recount(graph, selected, |_| false, |_| true);
        frontier
    }

    /// The next stage to examine.
    pub fn pop(&mut self) -> Option<usize> {
        self.examinable.pop_first()
    }

    pub fn users(&self, i: usize) -> &[usize] {
        &self.users[i]
    }

    /// Stage `i` settled: the users it was the last unsettled dependency
    /// of become examinable.
    pub fn settled(&mut self, i: usize) {
        for &u in &self.users[i] {
            self.unsettled[u] -= 1;
            if self.unsettled[u] == 0 {
                self.examinable.insert(u);
            }
        }
    }

    /// Counts again from the stages' states, after some went back to
    /// pending (a damaged output's producer re-runs).
    pub fn recount(&mut self, graph: &Graph, selected: &BTreeSet<usize>, settled: impl Fn(usize) -> bool, pending: impl Fn(usize) -> bool) {
        self.examinable.clear();
        for &i in selected {
            self.unsettled[i] = graph.deps[i].iter().filter(|&&d| !settled(d)).count();
            if self.unsettled[i] == 0 && pending(i) {
                self.examinable.insert(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a → b → d, a → c → d, and e alone; all selected but e.
    fn diamond() -> (Graph, BTreeSet<usize>) {
        let mut g = Graph::new(["a", "b", "c", "d", "e"].map(String::from).to_vec());
        for (user, dep) in [(1, 0), (2, 0), (3, 1), (3, 2)] {
            g.add_edge(user, dep);
        }
        (g, [0, 1, 2, 3].into())
    }

    #[test]
    fn a_stage_is_examinable_once_all_its_dependencies_settled() {
        let (g, selected) = diamond();
        let mut f = Frontier::new(&g, &selected);
        assert_eq!(f.pop(), Some(0));
        assert_eq!(f.pop(), None, "e is not selected; b, c and d wait on a");
        f.settled(0);
        assert_eq!((f.pop(), f.pop(), f.pop()), (Some(1), Some(2), None));
        f.settled(2);
        assert_eq!(f.pop(), None, "d still waits on b");
        f.settled(1);
        assert_eq!((f.pop(), f.pop()), (Some(3), None));
    }

    #[test]
    fn a_recount_follows_stages_sent_back_to_pending() {
        let (g, selected) = diamond();
        let mut f = Frontier::new(&g, &selected);
        f.pop();
        f.settled(0);
        f.pop();
        f.pop();
        f.settled(1);
        // a's output was found damaged: a and b are pending again.
        f.recount(&g, &selected, |_| false, |_| true);
        assert_eq!((f.pop(), f.pop()), (Some(0), None));
        f.settled(0);
        assert_eq!((f.pop(), f.pop(), f.pop()), (Some(1), Some(2), None));
        f.settled(1);
        f.settled(2);
        assert_eq!(f.pop(), Some(3));
        assert_eq!(f.users(0), &[1, 2]);
    }
}
