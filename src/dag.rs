//! The stage graph: edges from each stage to the stages whose outputs it
//! reads, a deterministic topological order, cycle reporting, and the
//! text/dot/mermaid renderings behind `cairn dag`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A graph over stage indices `0..n`; `deps[i]` are the stages `i` reads from.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub names: Vec<String>,
    pub deps: Vec<BTreeSet<usize>>,
    /// Name → index: every reference is resolved by name, and a linear
    /// search made a 1,000-stage pipeline quadratic.
    index: HashMap<String, usize>,
}

impl Graph {
    pub fn new(names: Vec<String>) -> Self {
        let n = names.len();
        let index = names.iter().enumerate().map(|(i, name)| (name.clone(), i)).collect();
        Self { names, deps: vec![BTreeSet::new(); n], index }
    }

    /// The index of the stage called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn add_edge(&mut self, from_consumer: usize, to_producer: usize) {
        self.deps[from_consumer].insert(to_producer);
    }

    /// The same graph with its nodes renumbered: node `order[k]` becomes
    /// `k` (`order` is a permutation of `0..n`, e.g. a topological order).
    pub fn reordered(&self, order: &[usize]) -> Graph {
        let mut renumbered = vec![0; order.len()];
        for (k, &old) in order.iter().enumerate() {
            renumbered[old] = k;
        }
        let mut graph = Graph::new(order.iter().map(|&old| self.names[old].clone()).collect());
        for (k, &old) in order.iter().enumerate() {
            graph.deps[k] = self.deps[old].iter().map(|&d| renumbered[d]).collect();
        }
        graph
    }

    /// For each stage, the stages that read it, among those `keep` accepts,
    /// in index order.
    pub fn users(&self, keep: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
        let mut users = vec![Vec::new(); self.deps.len()];
        for (i, deps) in self.deps.iter().enumerate().filter(|&(i, _)| keep(i)) {
            for &d in deps {
                users[d].push(i);
            }
        }
        users
    }

    /// The stages `keep` accepts, in waves: each stage comes one wave after
    /// the last of its dependencies, so the stages of a wave depend on
    /// none of each other and can be asked about together. Within a wave,
    /// index order. The graph must be numbered in a topological order (as
    /// a pipeline's is), every dependency before its users.
    pub fn waves(&self, keep: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
        let mut wave_of = vec![0; self.deps.len()];
        let mut waves: Vec<Vec<usize>> = Vec::new();
        for i in (0..self.deps.len()).filter(|&i| keep(i)) {
            debug_assert!(self.deps[i].iter().all(|&d| d < i), "numbered in a topological order");
            let w = self.deps[i].iter().filter(|&&d| keep(d)).map(|&d| wave_of[d] + 1).max().unwrap_or(0);
            wave_of[i] = w;
            if waves.len() <= w {
                waves.resize_with(w + 1, Vec::new);
            }
            waves[w].push(i);
        }
        waves
    }

    /// A topological order (producers first), ties broken by declaration
    /// order so the order is stable; or one cycle, as stage names with the
    /// first repeated at the end.
    pub fn topo_order(&self) -> Result<Vec<usize>, Vec<String>> {
        let n = self.names.len();
        let mut indegree: Vec<usize> = self.deps.iter().map(|d| d.len()).collect();
        let users = self.users(|_| true);
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() == n {
            Ok(order)
        } else {
            Err(self.find_cycle(&indegree))
        }
    }

    /// Walks dependencies among the stages left with unmet deps until one
    /// repeats; every such stage lies on or leads to a cycle.
    fn find_cycle(&self, indegree: &[usize]) -> Vec<String> {
        let start = (0..self.names.len()).find(|&i| indegree[i] > 0).unwrap_or(0);
        let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
        let mut path = Vec::new();
        let mut cur = start;
        loop {
            if let Some(&pos) = seen.get(&cur) {
                let mut cycle: Vec<String> = path[pos..].iter().map(|&i: &usize| self.names[i].clone()).collect();
                cycle.reverse();
                cycle.push(cycle[0].clone());
                return cycle;
            }
            seen.insert(cur, path.len());
            path.push(cur);
            cur = match self.deps[cur].iter().find(|&&d| indegree[d] > 0) {
                Some(&d) => d,
                None => return vec![self.names[cur].clone()],
            };
        }
    }

    /// `targets` and everything they (transitively) read from.
    pub fn ancestors_of(&self, targets: &[usize]) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if out.insert(i) {
                stack.extend(self.deps[i].iter().copied());
            }
        }
        out
    }

    /// Renders the graph. `format` is `text`, `dot` or `mermaid`.
    pub fn render(&self, format: &str, labels: &[String]) -> String {
        let order = self.topo_order().unwrap_or_else(|_| (0..self.names.len()).collect());
        let mut out = String::new();
        match format {
            "dot" => {
                out.push_str("digraph pipeline {\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n");
                for &i in &order {
                    out.push_str(&format!("  \"{}\" [label=\"{}\\n{}\"];\n", self.names[i], self.names[i], labels[i]));
                }
                for &i in &order {
                    for &d in &self.deps[i] {
                        out.push_str(&format!("  \"{}\" -> \"{}\";\n", self.names[d], self.names[i]));
                    }
                }
                out.push_str("}\n");
            }
            "mermaid" => {
                out.push_str("graph LR\n");
                for &i in &order {
                    out.push_str(&format!("  {}[\"{}<br/><small>{}</small>\"]\n", self.names[i], self.names[i], labels[i]));
                }
                for &i in &order {
                    for &d in &self.deps[i] {
                        out.push_str(&format!("  {} --> {}\n", self.names[d], self.names[i]));
                    }
                }
            }
            _ => {
                for &i in &order {
                    let deps: Vec<&str> = self.deps[i].iter().map(|&d| self.names[d].as_str()).collect();
                    if deps.is_empty() {
                        out.push_str(&format!("{} ({})\n", self.names[i], labels[i]));
                    } else {
                        out.push_str(&format!("{} ({}) ← {}\n", self.names[i], labels[i], deps.join(", ")));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(usize, usize)], n: usize) -> Graph {
        let mut g = Graph::new((0..n).map(|i| format!("s{i}")).collect());
        for &(a, b) in edges {
            g.add_edge(a, b);
        }
        g
    }

    #[test]
    fn reordering_renumbers_names_edges_and_the_index() {
        // s0 reads s2, s1 reads s0: producers first is [2, 0, 1].
        let g = graph(&[(0, 2), (1, 0)], 3);
        let order = g.topo_order().unwrap();
        assert_eq!(order, vec![2, 0, 1]);
        let r = g.reordered(&order);
        assert_eq!(r.names, vec!["s2", "s0", "s1"]);
        assert_eq!(r.deps, vec![BTreeSet::new(), BTreeSet::from([0]), BTreeSet::from([1])]);
        assert_eq!(r.index_of("s1"), Some(2));
        assert_eq!(r.topo_order().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn waves_put_each_stage_one_after_its_last_dependency() {
        // s1 and s2 read s0, s3 reads s1 and s0, s4 reads s3, s5 alone.
        let g = graph(&[(1, 0), (2, 0), (3, 1), (3, 0), (4, 3)], 6);
        assert_eq!(g.waves(|_| true), vec![vec![0, 5], vec![1, 2], vec![3], vec![4]]);
        // Without s1, s3 only waits on s0.
        assert_eq!(g.waves(|i| i != 1), vec![vec![0, 5], vec![2, 3], vec![4]]);
        assert!(g.waves(|_| false).is_empty());
    }

    #[test]
    fn order_is_topological_and_stable() {
        let g = graph(&[(2, 0), (1, 2)], 3);
        assert_eq!(g.topo_order().unwrap(), vec![0, 2, 1]);
    }

    #[test]
    fn cycle_is_named() {
        let g = graph(&[(0, 1), (1, 2), (2, 0)], 4);
        let cycle = g.topo_order().unwrap_err();
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.first(), cycle.last());
    }

    #[test]
    fn ancestors() {
        let g = graph(&[(1, 0), (2, 1), (3, 0)], 4);
        assert_eq!(g.ancestors_of(&[2]), BTreeSet::from([0, 1, 2]));
    }
}
