//! Symbol ownership, module dependencies, kmod's topological order and its cycle report.

use std::collections::HashMap;

use crate::module::ModuleElf;

/// A symbol in depmod's table: the kernel's (no owner) or a module's (its array index).
#[derive(Debug, Clone, Copy)]
pub struct Symbol {
    pub owner: Option<u32>,
    pub crc: u64,
}

/// depmod's symbol table. Adding an existing name replaces it: the last exporter owns a symbol.
#[derive(Debug, Default)]
pub struct Symbols {
    pub table: HashMap<Vec<u8>, Symbol>,
    prefix: Option<u8>,
}

impl Symbols {
    pub fn new(prefix: Option<u8>) -> Symbols {
        Symbols { table: HashMap::new(), prefix }
    }

    /// Adds `name`, first stripping one `-P` prefix character unless the caller already did.
    pub fn add(&mut self, name: &[u8], prefix_skipped: bool, crc: u64, owner: Option<u32>) {
        let name = match (prefix_skipped, self.prefix, name.first()) {
            (false, Some(p), Some(&first)) if first == p => &name[1..],
            _ => name,
        };
        self.table.insert(name.to_vec(), Symbol { owner, crc });
    }

    pub fn prefix(&self) -> Option<u8> {
        self.prefix
    }

    /// The kernel-provided names every module may use without owning them.
    pub fn add_fake_kernel_symbols(&mut self) {
        self.add(b"__this_module", true, 0, None);
        self.add(b"_GLOBAL_OFFSET_TABLE_", true, 0, None);
        if self.find(b"TOC.").is_none() {
            self.add(b"TOC.", true, 0, None);
        }
    }

    /// Looks a needed symbol up: one leading `.` (PPC64) and one prefix character are ignored.
    pub fn find(&self, name: &[u8]) -> Option<&Symbol> {
        let name = name.strip_prefix(b".").unwrap_or(name);
        let name = match (self.prefix, name.first()) {
            (Some(p), Some(&first)) if first == p => &name[1..],
            _ => name,
        };
        self.table.get(name)
    }
}

/// What resolving dependencies reports besides the graph.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Direct dependencies of each module, in the order their symbols were met.
    pub deps: Vec<Vec<u32>>,
    /// `(module, symbol, owner)` for each new dependency, for `-v`.
    pub verbose: Vec<(u32, Vec<u8>, u32)>,
    /// `-e` findings: `(module, symbol, is_version_mismatch)`.
    pub problems: Vec<(u32, Vec<u8>, bool)>,
}

/// Links each module's needed symbols to their owners (kmod's `depmod_load_dependencies`).
pub fn resolve(
    modules: &[Option<ModuleElf>],
    symbols: &Symbols,
    print_unknown: bool,
    check_symvers: bool,
) -> Resolution {
    let mut out = Resolution { deps: vec![Vec::new(); modules.len()], ..Resolution::default() };
    for (index, elf) in modules.iter().enumerate() {
        let Some(imports) = elf.as_ref().and_then(|e| e.imports.as_ref()) else { continue };
        let index = index as u32;
        for import in imports {
            let Some(symbol) = symbols.find(&import.name) else {
                if print_unknown && !import.weak {
                    out.problems.push((index, import.name.clone(), false));
                }
                continue;
            };
            if check_symvers && symbol.crc != import.crc && !import.weak && print_unknown {
                out.problems.push((index, import.name.clone(), true));
            }
            if let Some(owner) = symbol.owner {
                let deps = &mut out.deps[index as usize];
                if !deps.contains(&owner) {
                    deps.push(owner);
                    out.verbose.push((index, import.name.clone(), owner));
                }
            }
        }
    }
    out
}

/// kmod's topological order: Kahn's algorithm with a LIFO stack of modules nobody needs, seeded in
/// array order. Returns each module's position, or the modules left in cycles.
pub fn topological_order(deps: &[Vec<u32>]) -> Result<Vec<u32>, Vec<u32>> {
    let n = deps.len();
    let mut users = vec![0u32; n];
    for list in deps {
        for &d in list {
            users[d as usize] += 1;
        }
    }
    let mut roots: Vec<u32> = (0..n as u32).filter(|&i| users[i as usize] == 0).collect();
    let mut order = vec![u32::MAX; n];
    let mut sorted = 0u32;
    while let Some(src) = roots.pop() {
        order[src as usize] = sorted;
        sorted += 1;
        for &dst in &deps[src as usize] {
            users[dst as usize] -= 1;
            if users[dst as usize] == 0 {
                roots.push(dst);
            }
        }
    }
    if (sorted as usize) < n {
        return Err(users);
    }
    Ok(order)
}

/// The lines kmod prints for dependency cycles (`Cycle detected: a -> b -> a` ...) and the number
/// of distinct modules in them, given the leftover user counts of a failed sort.
pub fn report_cycles(deps: &[Vec<u32>], users: &[u32], names: &[&[u8]]) -> (Vec<String>, usize) {
    let mut roots: Vec<u32> = (0..deps.len() as u32).filter(|&i| users[i as usize] > 0).collect();
    // kmod's explicit stack has room for this many vertices and it asserts past that; stopping
    // there keeps graphs with several interlocked cycles from walking forever.
    let stack_limit = roots.len().max(1);
    let mut visited = vec![false; deps.len()];
    let mut in_loops: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut lines = Vec::new();
    // Vertices of the search tree: (module, parent vertex).
    while !roots.is_empty() {
        let root = roots.remove(0);
        let mut vertices: Vec<(u32, Option<usize>)> = vec![(root, None)];
        let mut stack = vec![0usize];
        while let Some(v) = stack.pop() {
            let (module, _) = vertices[v];
            if visited[module as usize] && module == root {
                // Walk back to the root: the path from root to here is one cycle.
                let mut path = Vec::new();
                let mut parent = vertices[v].1;
                while let Some(p) = parent {
                    path.push(vertices[p].0);
                    parent = vertices[p].1;
                }
                path.reverse();
                let mut text = String::new();
                for &m in &path {
                    in_loops.insert(m);
                    roots.retain(|&r| r != m);
                    text.push_str(&String::from_utf8_lossy(names[m as usize]));
                    text.push_str(" -> ");
                }
                text.push_str(&String::from_utf8_lossy(names[module as usize]));
                lines.push(format!("Cycle detected: {text}"));
                continue;
            }
            visited[module as usize] = true;
            if deps[module as usize].is_empty() {
                roots.retain(|&r| r != module);
                continue;
            }
            for &dep in &deps[module as usize] {
                if stack.len() >= stack_limit {
                    break;
                }
                vertices.push((dep, Some(v)));
                stack.push(vertices.len() - 1);
            }
        }
    }
    (lines, in_loops.len())
}

/// All dependencies of `module`, transitively, ordered by topological position (dependents first).
pub fn all_dependencies(module: u32, deps: &[Vec<u32>], order: &[u32], seen: &mut [u32], stamp: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack: Vec<u32> = deps[module as usize].iter().rev().copied().collect();
    while let Some(m) = stack.pop() {
        if seen[m as usize] == stamp {
            continue;
        }
        seen[m as usize] = stamp;
        out.push(m);
        stack.extend(deps[m as usize].iter().rev().copied());
    }
    out.sort_by_key(|&m| order[m as usize]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependents_come_first() {
        // 0 needs 1, 1 needs 2, 3 needs 2.
        let deps = vec![vec![1], vec![2], vec![], vec![2]];
        let order = topological_order(&deps).expect("acyclic");
        let mut seen = vec![0; 4];
        let all = all_dependencies(0, &deps, &order, &mut seen, 1);
        assert_eq!(all, vec![1, 2]);
        assert!(order[0] < order[1] && order[1] < order[2] && order[3] < order[2]);
    }

    #[test]
    fn cycles_are_reported_with_their_modules() {
        // a -> b -> a, and c needs a (the sort removes c; the loop alone is reported).
        let deps = vec![vec![1], vec![0], vec![0]];
        let users = topological_order(&deps).expect_err("cycle");
        let names: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        let (lines, count) = report_cycles(&deps, &users, &names);
        assert_eq!(lines, vec!["Cycle detected: a -> b -> a".to_string()]);
        assert_eq!(count, 2);
    }

    #[test]
    fn last_exporter_owns_and_prefix_is_stripped() {
        let mut symbols = Symbols::new(Some(b'_'));
        symbols.add(b"_foo", false, 1, Some(0));
        symbols.add(b"foo", false, 2, Some(1));
        let found = symbols.find(b"._foo").expect("found");
        assert_eq!((found.owner, found.crc), (Some(1), 2));
    }
}
