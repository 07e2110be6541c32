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
///
/// kmod's own walk decides the lines wherever kmod finishes it. On graphs where it does not (its
/// fixed-size stack overflows and it aborts on an assertion, or a path re-enters a cycle that
/// does not pass through the walk's root, which kmod walks forever), each strongly connected
/// group of modules is reported instead, as one shortest cycle from its first module.
pub fn report_cycles(deps: &[Vec<u32>], users: &[u32], names: &[&[u8]]) -> (Vec<String>, usize) {
    let unsorted: Vec<u32> = (0..deps.len() as u32).filter(|&i| users[i as usize] > 0).collect();
    let (cycles, count) = kmod_walk(deps, &unsorted).unwrap_or_else(|| strongly_connected(deps, &unsorted));
    let lines = cycles
        .iter()
        .map(|cycle| {
            let path: Vec<String> =
                cycle.iter().map(|&m| String::from_utf8_lossy(names[m as usize]).into_owned()).collect();
            format!("Cycle detected: {}", path.join(" -> "))
        })
        .collect();
    (lines, count)
}

/// The most search-tree vertices kmod's walk may take before the report falls back (kmod would
/// be walking an exponential number of paths).
const WALK_BUDGET: usize = 1 << 20;

/// kmod's depmod_report_cycles: from each root left in its list, a depth-first walk with an
/// explicit stack (room for one vertex per unsorted module) that reports each path returning to
/// the root. `None` where kmod would not finish.
fn kmod_walk(deps: &[Vec<u32>], unsorted: &[u32]) -> Option<(Vec<Vec<u32>>, usize)> {
    let mut roots = Roots(unsorted.iter().copied().collect());
    let stack_size = unsorted.len();
    let mut visited = vec![false; deps.len()];
    let mut in_loops: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut cycles = Vec::new();
    let mut walked = 0usize;
    while let Some(root) = roots.0.pop_front() {
        // Vertices of the search tree: (module, parent vertex).
        let mut vertices: Vec<(u32, Option<usize>)> = vec![(root, None)];
        let mut stack = vec![0usize];
        while let Some(v) = stack.pop() {
            let module = vertices[v].0;
            if visited[module as usize] && module == root {
                // The path from the root to here is one cycle.
                let mut path = ancestors(&vertices, v);
                path.reverse();
                for &m in &path {
                    in_loops.insert(m);
                    roots.remove(m);
                }
                path.push(module);
                cycles.push(path);
                continue;
            }
            visited[module as usize] = true;
            if deps[module as usize].is_empty() {
                roots.remove(module);
                continue;
            }
            for &dep in &deps[module as usize] {
                let reentered = dep != root && (module == dep || ancestors(&vertices, v).contains(&dep));
                walked += 1;
                if stack.len() >= stack_size || reentered || walked > WALK_BUDGET {
                    return None;
                }
                vertices.push((dep, Some(v)));
                stack.push(vertices.len() - 1);
            }
        }
    }
    Some((cycles, in_loops.len()))
}

/// The modules above vertex `v` in the search tree, nearest first.
fn ancestors(vertices: &[(u32, Option<usize>)], v: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut parent = vertices[v].1;
    while let Some(p) = parent {
        out.push(vertices[p].0);
        parent = vertices[p].1;
    }
    out
}

/// Each strongly connected group of two or more unsorted modules (Tarjan's algorithm, iterative),
/// in the order of its first module, as the shortest cycle from that module back to itself; and
/// the number of modules in such groups.
fn strongly_connected(deps: &[Vec<u32>], unsorted: &[u32]) -> (Vec<Vec<u32>>, usize) {
    const UNSEEN: u32 = u32::MAX;
    let n = deps.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut group_of = vec![UNSEEN; n];
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut counter = 0u32;
    for &start in unsorted {
        if index[start as usize] != UNSEEN {
            continue;
        }
        // (module, next dependency to look at)
        let mut frames: Vec<(u32, usize)> = vec![(start, 0)];
        index[start as usize] = counter;
        low[start as usize] = counter;
        counter += 1;
        stack.push(start);
        on_stack[start as usize] = true;
        while let Some(&mut (module, ref mut next)) = frames.last_mut() {
            if let Some(&dep) = deps[module as usize].get(*next) {
                *next += 1;
                if index[dep as usize] == UNSEEN {
                    index[dep as usize] = counter;
                    low[dep as usize] = counter;
                    counter += 1;
                    stack.push(dep);
                    on_stack[dep as usize] = true;
                    frames.push((dep, 0));
                } else if on_stack[dep as usize] {
                    low[module as usize] = low[module as usize].min(index[dep as usize]);
                }
                continue;
            }
            frames.pop();
            if let Some(&(parent, _)) = frames.last() {
                low[parent as usize] = low[parent as usize].min(low[module as usize]);
            }
            if low[module as usize] == index[module as usize] {
                let mut group = Vec::new();
                while let Some(m) = stack.pop() {
                    on_stack[m as usize] = false;
                    group_of[m as usize] = groups.len() as u32;
                    group.push(m);
                    if m == module {
                        break;
                    }
                }
                groups.push(group);
            }
        }
    }
    let mut cyclic: Vec<&Vec<u32>> = groups.iter().filter(|g| g.len() > 1).collect();
    let first = |g: &Vec<u32>| g.iter().copied().min().unwrap_or(0);
    cyclic.sort_by_key(|g| first(g));
    let count = cyclic.iter().map(|g| g.len()).sum();
    let cycles = cyclic.iter().map(|g| shortest_cycle(deps, first(g), &group_of)).collect();
    (cycles, count)
}

/// The shortest path from `start` back to itself inside its group (breadth first, dependencies in
/// their order), `start` at both ends.
fn shortest_cycle(deps: &[Vec<u32>], start: u32, group_of: &[u32]) -> Vec<u32> {
    let group = group_of[start as usize];
    let mut came_from: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(module) = queue.pop_front() {
        for &dep in &deps[module as usize] {
            if group_of[dep as usize] != group {
                continue;
            }
            if dep == start {
                let mut cycle = vec![module];
                while let Some(&previous) = came_from.get(cycle.last().unwrap_or(&start)) {
                    cycle.push(previous);
                }
                cycle.reverse();
                cycle.push(start);
                return cycle;
            }
            if dep != start && !came_from.contains_key(&dep) {
                came_from.insert(dep, module);
                queue.push_back(dep);
            }
        }
    }
    vec![start, start]
}

/// The modules left to start a cycle search from: kmod's circular list, whose head moves to the
/// successor of each removed module. That decides which module each reported cycle starts from.
struct Roots(std::collections::VecDeque<u32>);

impl Roots {
    /// kmod_list_remove_data: drops `module` if present; the module after it becomes the head.
    fn remove(&mut self, module: u32) {
        if let Some(at) = self.0.iter().position(|&m| m == module) {
            self.0.remove(at);
            if at < self.0.len() {
                self.0.rotate_left(at);
            }
        }
    }
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
    fn a_walk_kmod_never_finishes_reports_each_group_once() {
        // c -> a, a <-> b, d <-> e, d -> c: from root c, kmod's walk circles a and b forever.
        let deps = vec![vec![1], vec![2], vec![1], vec![4, 0], vec![3]];
        let users = topological_order(&deps).expect_err("cycle");
        let names: Vec<&[u8]> = vec![b"c", b"a", b"b", b"d", b"e"];
        let (lines, count) = report_cycles(&deps, &users, &names);
        assert_eq!(lines, vec!["Cycle detected: a -> b -> a".to_string(), "Cycle detected: d -> e -> d".to_string()]);
        assert_eq!(count, 4);
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
