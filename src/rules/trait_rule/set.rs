//! The compiled set of trait rules and the hot-path [`TraitRules::qualify`].
//!
//! Compiling turns each rule into a tree over pre-processed atoms and indexes the rule by a
//! *trigger set*: atoms of which at least one holds whenever the rule holds (CONTRACT §5 makes
//! every atom existential over the line's signals with its key, so a true atom implies a signal
//! with that key).
//!
//! - Atoms are interned: rules that repeat an atom (same key, operator and value as written,
//!   like the many `ic == "30612"` rules of a catalog) share one, so a line tests it once.
//! - Literals are analysed once at compile time (canonical form, decimal parts, lowercase,
//!   one `memmem` finder per `contains`, one regex per `matchesregex` pattern); a line's signal
//!   values are analysed once per call ([`Shape`]), so a comparison is a slice compare.
//! - `key == v` triggers are looked up by a hash of (data source, key, canonical value), so a
//!   line meets only the equality rules its own values name.
//! - Other triggers (`!=`, `<`, `contains`, ...) are looked up by a hash of (data source, key).
//! - A rule with no trigger set (one that can hold with no signal, like `NOT k == 1`) is on its
//!   data source's "always evaluate" list.
//!
//! Candidates from the index are de-duplicated with a generation-stamped array in [`Scratch`]
//! and then evaluated in full, so hash collisions cost time, never correctness. Each atom's
//! satisfying signals are computed at most once per call (memoized under the same generation)
//! and serve both the rule's truth and its used items.
//!
//! BE ADVISED: `triggers` must only return atoms that are *necessary* for the rule (the rule
//! true ⟹ one of them true). Changing the semantics of an operator so that it can hold without
//! a signal of its key (for example `!=` true on an absent key) requires treating that operator
//! like `NOT` there, or rules will silently stop qualifying.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use ahash::AHashMap;
use memchr::memmem::Finder;
use regex::bytes::Regex;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::RuleError;
use super::syntax::{Atom, Expr, Op, SyntaxError, SyntaxErrorKind, parse_spanned};
use super::value::{Shape, View};
use crate::model::{Dpid, TraitId};

/// The item index pushed for a qualified trait that no signal item satisfied positively (a
/// rule like `NOT k == 1` on a line without `k`).
pub const NO_ITEM: u32 = u32::MAX;

/// Seed of the (data source, key) hash. Any fixed value works; it only has to be fixed so
/// that runs behave the same.
const KEY_SEED: u64 = 0x07a1_75e9_0000_0001;

/// Hasher of keys that already are xxh3 hashes: passes the `u64` through instead of hashing
/// it a second time.
#[derive(Clone, Copy, Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are used; any other input is still hashed deterministically.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by an xxh3 hash.
type HashKeyed<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// A set of compiled trait rules, indexed for [`TraitRules::qualify`].
#[derive(Debug, Default)]
pub struct TraitRules {
    /// Rules in compile order; a rule's position is its index everywhere below.
    rules: Vec<Rule>,
    /// Distinct atoms of all rules; `Node::Atom` holds a position here.
    atoms: Vec<CompiledAtom>,
    /// Hash of (data source, key) → the rules to evaluate when a signal has that key. Every
    /// key an atom of the data source's rules reads has an entry (perhaps with no rules): a
    /// signal whose key has none is not analysed.
    by_key: HashKeyed<KeyEntry>,
    /// Hash of (data source, key, canonical value) → rules with that equality trigger.
    by_value: HashKeyed<Postings>,
    /// Rules of a data source to evaluate on every line.
    always: AHashMap<Dpid, Postings>,
    /// Rule indexes the `Postings` above point into.
    postings: Vec<u32>,
}

#[derive(Debug)]
struct Rule {
    trait_id: TraitId,
    ds: Dpid,
    root: Node,
}

#[derive(Debug)]
enum Node {
    Atom(u32),
    Not(Box<Node>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
}

#[derive(Debug)]
struct CompiledAtom {
    key: Box<[u8]>,
    test: Test,
}

/// A rule's value analysed once: its bytes as written and its [`Shape`] in `canonical`.
#[derive(Debug)]
struct Literal {
    value: Box<[u8]>,
    canonical: Box<[u8]>,
    shape: Shape,
}

impl Literal {
    fn new(value: &[u8]) -> Literal {
        let mut canonical = Vec::new();
        let shape = Shape::prepare(value, &mut canonical);
        Literal {
            value: value.into(),
            canonical: canonical.into(),
            shape,
        }
    }

    fn view(&self) -> View<'_> {
        self.shape.view(&self.value, &self.canonical)
    }
}

#[derive(Debug)]
enum Test {
    /// `==`, `!=`, `<`, `>`, `<=`, `>=` against the value as written.
    Compare(Op, Literal),
    /// Finds the lowercased needle in the lowercased signal value (boxed: a `Finder` is
    /// large and rare).
    Contains(Box<Finder<'static>>),
    /// The lowercased prefix.
    StartsWith(Box<[u8]>),
    /// The lowercased suffix.
    EndsWith(Box<[u8]>),
    Regex(Regex),
}

/// A run of `TraitRules::postings`.
#[derive(Clone, Copy, Debug, Default)]
struct Postings {
    start: u32,
    len: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct KeyEntry {
    /// Rules with a non-equality trigger on this key.
    any: Postings,
    /// Whether some equality trigger uses this key (else the value hash is not computed).
    has_eq: bool,
}

/// Reusable per-thread buffers for [`TraitRules::qualify`]: after the first calls, qualifying a
/// line allocates nothing. One `Scratch` may serve any number of `TraitRules`.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Per rule: the generation in which it last became a candidate.
    stamps: Vec<u32>,
    generation: u32,
    /// Candidate rule indexes of the current call.
    candidates: Vec<u32>,
    /// The analysed signal values of the current call.
    line: Line,
    /// Atoms evaluated in the current call.
    memo: Memo,
    /// Item indexes of the current qualified rule.
    items: Vec<u32>,
}

/// The current call's signals, analysed once.
#[derive(Debug, Default)]
struct Line {
    /// Per signal, in order: where its analysis is in `buf`.
    shapes: Vec<Shape>,
    /// Canonical forms of the signal values.
    buf: Vec<u8>,
}

/// Per atom: the signals (positions in the call's slice) that satisfy it, computed at most once
/// per call.
#[derive(Debug, Default)]
struct Memo {
    /// Per atom: the generation in which `runs` was filled.
    stamps: Vec<u32>,
    /// Per atom: its run of `hits`.
    runs: Vec<(u32, u32)>,
    /// Signal positions.
    hits: Vec<u32>,
}

impl Scratch {
    /// An empty scratch; buffers grow on first use.
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Starts a call over `rules` rules and `atoms` atoms: a fresh generation, no candidates,
    /// no memoized atoms, no signals.
    fn begin(&mut self, rules: usize, atoms: usize) {
        if self.stamps.len() < rules {
            self.stamps.resize(rules, 0);
        }
        if self.memo.stamps.len() < atoms {
            self.memo.stamps.resize(atoms, 0);
            self.memo.runs.resize(atoms, (0, 0));
        }
        self.generation = match self.generation.checked_add(1) {
            Some(g) => g,
            None => {
                // Wrapped: forget every old stamp so none can equal a new generation.
                self.stamps.fill(0);
                self.memo.stamps.fill(0);
                1
            }
        };
        self.candidates.clear();
        self.memo.hits.clear();
        self.line.shapes.clear();
        self.line.buf.clear();
    }
}

/// Appends the atoms of `node`.
fn atoms_of(node: &Node, out: &mut Vec<u32>) {
    match node {
        Node::Atom(a) => out.push(*a),
        Node::Not(x) => atoms_of(x, out),
        Node::And(xs) | Node::Or(xs) => xs.iter().for_each(|x| atoms_of(x, out)),
    }
}

/// Marks every rule of `run` as a candidate once per generation.
fn add_candidates(
    postings: &[u32],
    run: Postings,
    generation: u32,
    stamps: &mut [u32],
    candidates: &mut Vec<u32>,
) {
    let start = run.start as usize;
    let rules = postings
        .get(start..start + run.len as usize)
        .unwrap_or_default();
    for &rule in rules {
        if let Some(stamp) = stamps.get_mut(rule as usize)
            && *stamp != generation
        {
            *stamp = generation;
            candidates.push(rule);
        }
    }
}

fn key_hash(ds: Dpid, key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED ^ u64::from(ds))
}

/// Hash of a canonical value under its (data source, key) hash.
fn value_hash(key_hash: u64, canonical: &[u8]) -> u64 {
    xxh3_64_with_seed(canonical, key_hash)
}

/// What evaluation reads: the call's signals and their analysis, and the generation.
struct Call<'c, 's> {
    signals: &'c [(u32, &'s [u8], &'s [u8])],
    line: &'c Line,
    generation: u32,
}

impl TraitRules {
    /// Compiles `rules`: (trait id, owning data source, rule text). Errors list every bad rule
    /// (syntax errors with their column, invalid regexes, a trait given twice), in input order.
    pub fn compile<'a>(
        rules: impl IntoIterator<Item = (TraitId, Dpid, &'a str)>,
    ) -> Result<TraitRules, Vec<RuleError>> {
        let mut set = TraitRules::default();
        let mut errors = Vec::new();
        let mut seen: AHashMap<TraitId, ()> = AHashMap::new();
        // Atom as written → its index in `set.atoms`.
        let mut interned: AHashMap<Atom, u32> = AHashMap::new();
        // (hash, rule) pairs, grouped into postings at the end.
        let mut by_key: Vec<(u64, u32)> = Vec::new();
        let mut eq_keys: Vec<u64> = Vec::new();
        let mut by_value: Vec<(u64, u32)> = Vec::new();
        let mut always: Vec<(Dpid, u32)> = Vec::new();
        for (trait_id, ds, text) in rules {
            if seen.insert(trait_id, ()).is_some() {
                errors.push(RuleError::DuplicateTrait { trait_id });
                continue;
            }
            let root = match set.compile_rule(text, &mut interned) {
                Ok(root) => root,
                Err(error) => {
                    errors.push(RuleError::Syntax { trait_id, error });
                    continue;
                }
            };
            let Ok(index) = u32::try_from(set.rules.len()) else {
                errors.push(RuleError::TooMany { trait_id });
                continue;
            };
            // Every key the rule reads, so that its signals are analysed.
            let mut keys = Vec::new();
            atoms_of(&root, &mut keys);
            for a in keys {
                if let Some(atom) = set.atoms.get(a as usize) {
                    set.by_key.entry(key_hash(ds, &atom.key)).or_default();
                }
            }
            match set.triggers(&root) {
                None => always.push((ds, index)),
                Some(atoms) => {
                    for atom in atoms {
                        let Some(a) = set.atoms.get(atom as usize) else {
                            continue;
                        };
                        let kh = key_hash(ds, &a.key);
                        match &a.test {
                            Test::Compare(Op::Eq, literal) => {
                                by_value.push((value_hash(kh, &literal.canonical), index));
                                eq_keys.push(kh);
                            }
                            _ => by_key.push((kh, index)),
                        }
                    }
                }
            }
            set.rules.push(Rule { trait_id, ds, root });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let postings = &mut set.postings;
        for (kh, run) in group(by_key, postings) {
            set.by_key.entry(kh).or_default().any = run;
        }
        for kh in eq_keys {
            set.by_key.entry(kh).or_default().has_eq = true;
        }
        set.by_value = group(by_value, postings).collect();
        set.always = group(always, postings).collect();
        Ok(set)
    }

    /// Parses `text` and compiles its atoms (each distinct atom once, regexes included) into
    /// `self.atoms`.
    fn compile_rule(
        &mut self,
        text: &str,
        interned: &mut AHashMap<Atom, u32>,
    ) -> Result<Node, SyntaxError> {
        let (expr, value_columns) = parse_spanned(text)?;
        let mut columns = value_columns.into_iter();
        self.node(&expr, &mut columns, interned)
    }

    fn node(
        &mut self,
        expr: &Expr,
        columns: &mut impl Iterator<Item = usize>,
        interned: &mut AHashMap<Atom, u32>,
    ) -> Result<Node, SyntaxError> {
        Ok(match expr {
            Expr::Atom(atom) => {
                let column = columns.next().unwrap_or(0);
                if let Some(&index) = interned.get(atom) {
                    return Ok(Node::Atom(index));
                }
                let value = atom.value.as_bytes();
                let test = match atom.op {
                    Op::Contains => Test::Contains(Box::new(
                        Finder::new(&value.to_ascii_lowercase()).into_owned(),
                    )),
                    Op::StartsWith => Test::StartsWith(value.to_ascii_lowercase().into()),
                    Op::EndsWith => Test::EndsWith(value.to_ascii_lowercase().into()),
                    Op::MatchesRegex => match Regex::new(&atom.value) {
                        Ok(re) => Test::Regex(re),
                        Err(e) => {
                            return Err(SyntaxError {
                                column,
                                kind: SyntaxErrorKind::BadRegex {
                                    reason: e.to_string(),
                                },
                            });
                        }
                    },
                    op => Test::Compare(op, Literal::new(value)),
                };
                let index = u32::try_from(self.atoms.len()).unwrap_or(u32::MAX);
                self.atoms.push(CompiledAtom {
                    key: atom.key.as_bytes().into(),
                    test,
                });
                interned.insert(atom.clone(), index);
                Node::Atom(index)
            }
            Expr::Not(x) => Node::Not(Box::new(self.node(x, columns, interned)?)),
            Expr::And(xs) => Node::And(self.nodes(xs, columns, interned)?),
            Expr::Or(xs) => Node::Or(self.nodes(xs, columns, interned)?),
        })
    }

    fn nodes(
        &mut self,
        exprs: &[Expr],
        columns: &mut impl Iterator<Item = usize>,
        interned: &mut AHashMap<Atom, u32>,
    ) -> Result<Box<[Node]>, SyntaxError> {
        exprs
            .iter()
            .map(|x| self.node(x, columns, interned))
            .collect()
    }

    /// Atoms of which one holds whenever `node` holds, or `None` if `node` can hold with no
    /// atom holding (see the module's BE ADVISED note).
    fn triggers(&self, node: &Node) -> Option<Vec<u32>> {
        match node {
            Node::Atom(a) => Some(vec![*a]),
            // Conservative: a negation can hold on a line without any signal.
            Node::Not(_) => None,
            // All operands hold, so any one operand's triggers do: take the cheapest.
            Node::And(xs) => xs
                .iter()
                .filter_map(|x| self.triggers(x))
                .min_by_key(|t| self.cost(t)),
            // Some operand holds: every operand needs triggers.
            Node::Or(xs) => {
                let mut all = Vec::new();
                for x in xs.iter() {
                    all.extend(self.triggers(x)?);
                }
                Some(all)
            }
        }
    }

    /// How many candidates a trigger set is likely to bring: a key-only trigger fires on every
    /// line with the key, an equality trigger only on its value.
    fn cost(&self, triggers: &[u32]) -> (usize, usize) {
        let key_only = triggers
            .iter()
            .filter(|&&a| {
                !matches!(
                    self.atoms.get(a as usize).map(|a| &a.test),
                    Some(Test::Compare(Op::Eq, _))
                )
            })
            .count();
        (key_only, triggers.len())
    }

    /// The number of compiled rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluates the rules of data source `ds` against one line's signals
    /// (`(item index, key, value)`, keys as the item parser gives them, `ic` for bare and `ic=`
    /// items).
    ///
    /// Pushes `(trait id, item index)` for every qualified trait and every signal item that
    /// satisfied one of that trait's atoms in positive position (under an even number of
    /// `NOT`s); a qualified trait without such an item is pushed once as
    /// `(trait id, NO_ITEM)`. Traits come in compile order, item indexes ascending and
    /// distinct per trait. Time is proportional to the line's signals plus the candidate
    /// rules, not to the number of rules; nothing is allocated once `scratch` has grown.
    pub fn qualify(
        &self,
        ds: Dpid,
        signals: &[(u32, &[u8], &[u8])],
        scratch: &mut Scratch,
        out: &mut Vec<(TraitId, u32)>,
    ) {
        if self.rules.is_empty() {
            return;
        }
        scratch.begin(self.rules.len(), self.atoms.len());
        let Scratch {
            stamps,
            generation,
            candidates,
            line,
            memo,
            items,
        } = scratch;
        let generation = *generation;
        if !self.always.is_empty()
            && let Some(&run) = self.always.get(&ds)
        {
            add_candidates(&self.postings, run, generation, stamps, candidates);
        }
        for &(_, key, value) in signals {
            // Every signal has its place in `shapes` (atoms read `shapes[position]`), analysed
            // once if an atom reads its key: only such a signal's shape is ever read.
            let kh = key_hash(ds, key);
            let Some(entry) = self.by_key.get(&kh) else {
                line.shapes.push(Shape::default());
                continue;
            };
            let shape = Shape::prepare(value, &mut line.buf);
            line.shapes.push(shape);
            add_candidates(&self.postings, entry.any, generation, stamps, candidates);
            if entry.has_eq {
                let canonical = shape.view(value, &line.buf).canonical();
                if let Some(&run) = self.by_value.get(&value_hash(kh, canonical)) {
                    add_candidates(&self.postings, run, generation, stamps, candidates);
                }
            }
        }
        if candidates.is_empty() {
            return;
        }
        let call = Call {
            signals,
            line,
            generation,
        };
        // Compile order, whatever order the hash tables gave.
        candidates.sort_unstable();
        for &index in candidates.iter() {
            let Some(rule) = self.rules.get(index as usize) else {
                continue;
            };
            // A hash collision across data sources can bring another source's rule.
            if rule.ds != ds {
                continue;
            }
            items.clear();
            if let Node::Atom(a) = rule.root {
                // Most catalog rules are one atom (`ic == "30612"`): it holds when a signal
                // satisfies it, and those signals are its items.
                self.atom_items(a, &call, memo, items);
                if items.is_empty() {
                    continue;
                }
                if !items.is_sorted_by(|a, b| a < b) {
                    items.sort_unstable();
                    items.dedup();
                }
                out.extend(items.iter().map(|&item| (rule.trait_id, item)));
                continue;
            }
            if !self.eval(&rule.root, &call, memo) {
                continue;
            }
            self.used_items(&rule.root, true, &call, memo, items);
            items.sort_unstable();
            items.dedup();
            if items.is_empty() {
                out.push((rule.trait_id, NO_ITEM));
            } else {
                out.extend(items.iter().map(|&item| (rule.trait_id, item)));
            }
        }
    }

    fn eval(&self, node: &Node, call: &Call<'_, '_>, memo: &mut Memo) -> bool {
        match node {
            Node::Atom(a) => self.hits(*a, call, memo).1 > 0,
            Node::Not(x) => !self.eval(x, call, memo),
            Node::And(xs) => xs.iter().all(|x| self.eval(x, call, memo)),
            Node::Or(xs) => xs.iter().any(|x| self.eval(x, call, memo)),
        }
    }

    /// The run of `memo.hits` holding the positions of the signals that satisfy atom `a`:
    /// computed on the first request of the call, then read back.
    fn hits(&self, a: u32, call: &Call<'_, '_>, memo: &mut Memo) -> (u32, u32) {
        let i = a as usize;
        if memo.stamps.get(i) == Some(&call.generation) {
            return memo.runs.get(i).copied().unwrap_or_default();
        }
        let Some(atom) = self.atoms.get(i) else {
            return (0, 0);
        };
        let start = memo.hits.len();
        for (position, (&(_, key, value), shape)) in
            call.signals.iter().zip(&call.line.shapes).enumerate()
        {
            if *key == *atom.key && atom.test.holds(value, shape.view(value, &call.line.buf)) {
                memo.hits.push(u32::try_from(position).unwrap_or(u32::MAX));
            }
        }
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let run = (to_u32(start), to_u32(memo.hits.len() - start));
        if let (Some(stamp), Some(slot)) = (memo.stamps.get_mut(i), memo.runs.get_mut(i)) {
            *stamp = call.generation;
            *slot = run;
        }
        run
    }

    /// Appends the items of the signals that satisfy atom `a`, in signal order.
    fn atom_items(&self, a: u32, call: &Call<'_, '_>, memo: &mut Memo, items: &mut Vec<u32>) {
        let (start, len) = self.hits(a, call, memo);
        let start = start as usize;
        let positions = memo
            .hits
            .get(start..start.saturating_add(len as usize))
            .unwrap_or_default();
        items.extend(
            positions
                .iter()
                .filter_map(|&p| call.signals.get(p as usize).map(|s| s.0)),
        );
    }

    /// Appends the items satisfying atoms of `node` that sit under an even number of `NOT`s
    /// (`positive`): a signal that satisfies a negated atom argues against the trait.
    fn used_items(
        &self,
        node: &Node,
        positive: bool,
        call: &Call<'_, '_>,
        memo: &mut Memo,
        items: &mut Vec<u32>,
    ) {
        match node {
            Node::Atom(a) => {
                if positive {
                    self.atom_items(*a, call, memo, items);
                }
            }
            Node::Not(x) => self.used_items(x, !positive, call, memo, items),
            Node::And(xs) | Node::Or(xs) => {
                for x in xs.iter() {
                    self.used_items(x, positive, call, memo, items);
                }
            }
        }
    }
}

impl Test {
    /// Whether a signal value (`value`, analysed as `signal`) satisfies this test.
    fn holds(&self, value: &[u8], signal: View<'_>) -> bool {
        match self {
            Test::Compare(op, rule) => {
                let rule = rule.view();
                match op {
                    Op::Eq => signal.equals(&rule),
                    Op::Ne => !signal.equals(&rule),
                    Op::Lt => signal.compare(&rule) == Ordering::Less,
                    Op::Gt => signal.compare(&rule) == Ordering::Greater,
                    Op::Le => signal.compare(&rule) != Ordering::Greater,
                    Op::Ge => signal.compare(&rule) != Ordering::Less,
                    // Compiled into their own variants; never stored here.
                    Op::Contains | Op::StartsWith | Op::EndsWith | Op::MatchesRegex => false,
                }
            }
            Test::Contains(needle) => needle.find(signal.lower).is_some(),
            Test::StartsWith(prefix) => signal.lower.starts_with(prefix),
            Test::EndsWith(suffix) => signal.lower.ends_with(suffix),
            Test::Regex(re) => re.is_match(value),
        }
    }
}

/// Sorts `(key, rule)` pairs and appends each key's distinct rules to `postings`, yielding
/// `(key, run)` per key.
fn group<K: Ord + Copy>(
    mut pairs: Vec<(K, u32)>,
    postings: &mut Vec<u32>,
) -> impl Iterator<Item = (K, Postings)> {
    pairs.sort_unstable();
    pairs.dedup();
    let mut runs = Vec::new();
    let mut rest = pairs.as_slice();
    while let Some(&(key, _)) = rest.first() {
        let len = rest.iter().take_while(|(k, _)| *k == key).count();
        let (run, tail) = rest.split_at(len);
        let start = u32::try_from(postings.len()).unwrap_or(u32::MAX);
        postings.extend(run.iter().map(|&(_, rule)| rule));
        runs.push((
            key,
            Postings {
                start,
                len: u32::try_from(len).unwrap_or(u32::MAX),
            },
        ));
        rest = tail;
    }
    runs.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Signal<'a> = (u32, &'a [u8], &'a [u8]);

    fn signals<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Signal<'a>> {
        pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| (i as u32, k.as_bytes(), v.as_bytes()))
            .collect()
    }

    fn rules(list: &[(TraitId, Dpid, &str)]) -> TraitRules {
        TraitRules::compile(list.iter().copied()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn qualify(set: &TraitRules, ds: Dpid, pairs: &[(&str, &str)]) -> Vec<(TraitId, u32)> {
        let mut out = Vec::new();
        set.qualify(ds, &signals(pairs), &mut Scratch::new(), &mut out);
        out
    }

    /// Whether the single rule `text` (trait 1, data source 7) holds on `pairs`.
    fn holds(text: &str, pairs: &[(&str, &str)]) -> bool {
        !qualify(&rules(&[(1, 7, text)]), 7, pairs).is_empty()
    }

    #[test]
    fn equality_and_inequality() {
        assert!(holds(r#"tier == "gold""#, &[("tier", "GOLD")]));
        assert!(!holds(r#"tier == "gold""#, &[("tier", "silver")]));
        assert!(
            !holds(r#"tier == "gold""#, &[("Tier", "gold")]),
            "keys are exact"
        );
        assert!(holds("tier != gold", &[("tier", "silver")]));
        assert!(!holds("tier != gold", &[("tier", "Gold")]));
        assert!(!holds("tier != gold", &[]), "absent key: != is false");
        assert!(!holds("tier != gold", &[("other", "x")]));
        // Existential: some signal with the key differs.
        assert!(holds(
            "tier != gold",
            &[("tier", "gold"), ("tier", "silver")]
        ));
        assert!(holds(
            "tier == gold",
            &[("tier", "silver"), ("tier", "gold")]
        ));
    }

    #[test]
    fn ordering_numeric_and_string() {
        assert!(holds(r#"n > "9""#, &[("n", "10")]), "10 > 9 numerically");
        assert!(!holds("n < 9", &[("n", "10")]));
        assert!(holds("n <= 1", &[("n", "1.000")]));
        assert!(holds("n >= 1", &[("n", "1.0")]));
        assert!(holds("n => -1", &[("n", "-0.5")]));
        assert!(!holds("n < -1", &[("n", "-0.5")]));
        assert!(holds("n == 7", &[("n", "007")]));
        // Strings compare lexicographically, ignoring case.
        assert!(holds("name < b", &[("name", "Alice")]));
        assert!(holds("name > B", &[("name", "carol")]));
        assert!(
            holds("v > 9", &[("v", "9a")]),
            "9a is not a number: string order"
        );
        let price = "price >= 1.00 AND price <= 100.00";
        assert!(holds(price, &[("price", "1")]));
        assert!(holds(price, &[("price", "100.00")]));
        assert!(holds(price, &[("price", "55.5")]));
        assert!(!holds(price, &[("price", "100.01")]));
        assert!(!holds(price, &[("price", "0.99")]));
        assert!(
            !holds(price, &[("price", "abc")]),
            "'abc' < '1.00' is false as strings"
        );
        // Existential per atom: one price satisfies each bound.
        assert!(holds(price, &[("price", "0.5"), ("price", "500")]));
    }

    #[test]
    fn named_operators() {
        assert!(holds(
            "model contains TRUCK",
            &[("model", "Pickup truck 4x4")]
        ));
        assert!(!holds("model contains bus", &[("model", "Pickup truck")]));
        assert!(holds(r#"model contains """#, &[("model", "")]));
        assert!(holds("model startswith PICK", &[("model", "pickup")]));
        assert!(!holds("model startswith truck", &[("model", "pickup")]));
        assert!(holds("model endswith UP", &[("model", "pickup")]));
        assert!(!holds("model endswith pick", &[("model", "pickup")]));
        // Regex: unanchored, case-sensitive unless (?i).
        assert!(holds(
            r#"email matchesregex "@example\.com$""#,
            &[("email", "a@example.com")]
        ));
        assert!(!holds(
            r#"email matchesregex "@example\.com$""#,
            &[("email", "a@EXAMPLE.com")]
        ));
        assert!(holds(
            r#"email matchesregex "(?i)@example\.com$""#,
            &[("email", "a@EXAMPLE.com")]
        ));
        assert!(holds(r#"z matchesregex "^[0-9]{5}$""#, &[("z", "12345")]));
        assert!(!holds(r#"z matchesregex "^[0-9]{5}$""#, &[("z", "123456")]));
        assert!(
            !holds(r#"z matchesregex ".*""#, &[]),
            "needs a signal with the key"
        );
    }

    #[test]
    fn boolean_structure() {
        let r = "a==1 OR b==1 AND c==1";
        assert!(holds(r, &[("a", "1")]));
        assert!(!holds(r, &[("b", "1")]));
        assert!(holds(r, &[("b", "1"), ("c", "1")]));
        let r = "(a==1 OR b==1) AND c==1";
        assert!(!holds(r, &[("a", "1")]));
        assert!(holds(r, &[("a", "1"), ("c", "1")]));
        let r = "a==1 AND NOT b==1";
        assert!(holds(r, &[("a", "1")]));
        assert!(holds(r, &[("a", "1"), ("b", "2")]));
        assert!(!holds(r, &[("a", "1"), ("b", "1")]));
        assert!(!holds(r, &[("a", "1"), ("b", "2"), ("b", "1")]));
        assert!(holds("a==1 NOT b==1", &[("a", "1"), ("b", "2")]));
        // Only negations: evaluated on every line, even one without signals.
        assert!(holds("NOT b==1", &[]));
        assert!(holds("NOT b==1", &[("x", "y")]));
        assert!(!holds("NOT b==1", &[("b", "1")]));
        assert!(holds("NOT NOT b==1", &[("b", "1")]));
        assert!(!holds("NOT NOT b==1", &[]));
        assert!(holds("a==1 OR NOT b==1", &[]));
    }

    #[test]
    fn aam_samples() {
        let r = r#"(c_make=="A") AND (c_model=="B") AND (c_search=="1")"#;
        assert!(holds(
            r,
            &[("c_make", "a"), ("c_model", "b"), ("c_search", "1")]
        ));
        assert!(!holds(r, &[("c_make", "a"), ("c_model", "b")]));
        let r = r#"(a== "1" OR b=="1") AND (c=="new")"#;
        assert!(holds(r, &[("b", "1"), ("c", "NEW")]));
        assert!(!holds(r, &[("b", "2"), ("c", "new")]));
    }

    #[test]
    fn ic_rules_and_used_items() {
        let set = rules(&[
            (123, 21, r#"ic == "123""#),
            (456, 21, r#"ic == "456""#),
            (789, 22, r#"ic == "123""#),
            (30, 21, r#"tier == gold AND NOT ic == "999""#),
        ]);
        // Bare `123` and `ic=123` both reach the rule as key `ic`.
        let line = [
            (0, &b"ic"[..], &b"123"[..]),
            (3, b"ic", b"0123"),
            (5, b"tier", b"Gold"),
        ];
        let mut out = Vec::new();
        let mut scratch = Scratch::new();
        set.qualify(21, &line, &mut scratch, &mut out);
        assert_eq!(out, [(123, 0), (123, 3), (30, 5)]);
        out.clear();
        set.qualify(22, &line, &mut scratch, &mut out);
        assert_eq!(out, [(789, 0), (789, 3)]);
        out.clear();
        set.qualify(23, &line, &mut scratch, &mut out);
        assert!(out.is_empty());
        out.clear();
        let line = [(0, &b"ic"[..], &b"999"[..]), (1, b"tier", b"gold")];
        set.qualify(21, &line, &mut scratch, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn used_items_are_positive_atoms_only() {
        let set = rules(&[(1, 7, "a == 1 OR NOT b == 2"), (2, 7, "NOT x == 1")]);
        let mut out = Vec::new();
        let line = signals(&[("a", "1"), ("b", "2"), ("a", "1.0"), ("c", "3")]);
        set.qualify(7, &line, &mut Scratch::new(), &mut out);
        assert_eq!(out, [(1, 0), (1, 2), (2, NO_ITEM)]);
        // Double negation is positive; a rule on repeated atoms lists each item once.
        let set = rules(&[(5, 7, "NOT NOT k == v AND (k == v OR k contains V)")]);
        let mut out = Vec::new();
        let line = signals(&[("k", "v"), ("k", "w"), ("k", "xv")]);
        set.qualify(7, &line, &mut Scratch::new(), &mut out);
        assert_eq!(out, [(5, 0), (5, 2)]);
    }

    #[test]
    fn candidates_use_the_index() {
        let set = rules(&[
            (1, 7, "a == 1 AND b > 5"),
            (2, 7, "a != 1"),
            (3, 7, "NOT a == 1"),
            (4, 7, "a == 1 OR b == 2"),
        ]);
        // Rule 1 is indexed on its equality atom only, rule 2 and 4 on key `a`/values,
        // rule 3 always.
        assert_eq!(set.always.get(&7).map(|p| p.len), Some(1));
        assert_eq!(set.by_value.len(), 2, "(a, 1) is shared by rules 1 and 4");
        let a = set
            .by_key
            .get(&key_hash(7, b"a"))
            .copied()
            .unwrap_or_default();
        assert!(a.has_eq);
        assert_eq!(a.any.len, 1);
        let b = set
            .by_key
            .get(&key_hash(7, b"b"))
            .copied()
            .unwrap_or_default();
        assert!(b.has_eq);
        assert_eq!(b.any.len, 0, "b > 5 is not a trigger: a == 1 is cheaper");

        let mut scratch = Scratch::new();
        let mut out = Vec::new();
        set.qualify(
            7,
            &signals(&[("b", "9"), ("a", "1")]),
            &mut scratch,
            &mut out,
        );
        assert_eq!(out, [(1, 0), (1, 1), (4, 1)]);
        out.clear();
        set.qualify(
            7,
            &signals(&[("a", "2"), ("b", "2")]),
            &mut scratch,
            &mut out,
        );
        assert_eq!(out, [(2, 0), (3, NO_ITEM), (4, 1)]);
        assert_eq!(set.len(), 4);
        assert!(!set.is_empty());
    }

    #[test]
    fn repeated_atoms_are_shared_and_tested_once_per_line() {
        let set = rules(&[
            (1, 7, r#"ic == "5""#),
            (2, 7, r#"ic == "5" AND k contains X"#),
            (3, 8, "ic == 5"),
            (4, 7, "NOT k contains x"),
        ]);
        // `ic == "5"` and `ic == 5` are one atom; `contains X` and `contains x` are two.
        assert_eq!(set.atoms.len(), 3);
        let line = signals(&[("ic", "05"), ("k", "aXb"), ("ic", "5")]);
        let small = rules(&[(9, 7, "k startswith A")]);
        let mut scratch = Scratch::new();
        // One scratch serves sets of different sizes, alternately.
        for _ in 0..2 {
            let mut out = Vec::new();
            set.qualify(7, &line, &mut scratch, &mut out);
            assert_eq!(out, [(1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]);
            out.clear();
            set.qualify(8, &line, &mut scratch, &mut out);
            assert_eq!(out, [(3, 0), (3, 2)]);
            out.clear();
            small.qualify(7, &line, &mut scratch, &mut out);
            assert_eq!(out, [(9, 1)]);
        }
    }

    #[test]
    fn scratch_generations_wrap() {
        let set = rules(&[(1, 7, "a == 1")]);
        let mut scratch = Scratch::new();
        scratch.generation = u32::MAX - 1;
        for _ in 0..4 {
            let mut out = Vec::new();
            set.qualify(7, &signals(&[("a", "1")]), &mut scratch, &mut out);
            assert_eq!(out, [(1, 0)]);
        }
        assert_eq!(scratch.generation, 3);
    }

    #[test]
    fn many_equality_rules() {
        let texts: Vec<String> = (0..100_000).map(|i| format!("ic == \"{i}\"")).collect();
        let set = TraitRules::compile(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| (i as TraitId, 21, t.as_str())),
        )
        .unwrap();
        let mut out = Vec::new();
        let line = signals(&[("ic", "17"), ("ic", "99999"), ("ic", "100000"), ("k", "v")]);
        set.qualify(21, &line, &mut Scratch::new(), &mut out);
        assert_eq!(out, [(17, 0), (99_999, 1)]);
    }

    #[test]
    fn errors_list_every_bad_rule() {
        let errors = TraitRules::compile([
            (24, 21, "c_make == "),
            (25, 21, "ok == 1"),
            (26, 21, r#"k matchesregex "a(""#),
            (25, 21, "ok == 2"),
        ])
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3);
        assert_eq!(
            text[0],
            "rule of trait 24, column 11: expected a value after '=='"
        );
        assert!(
            text[1].starts_with("rule of trait 26, column 16: invalid regular expression: "),
            "{}",
            text[1]
        );
        assert_eq!(
            text[2],
            "rule of trait 25: given more than once; a trait has one rule"
        );
    }

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TraitRules>();
        send_sync::<Scratch>();
    }

    #[test]
    fn oversized_regex_is_an_error() {
        let errors =
            TraitRules::compile([(9, 1, r#"k matchesregex "(a{1000}){1000}""#)]).unwrap_err();
        let [RuleError::Syntax { trait_id: 9, error }] = errors.as_slice() else {
            panic!("{errors:?}");
        };
        assert_eq!(error.column, 16);
        assert!(
            matches!(error.kind, SyntaxErrorKind::BadRegex { .. }),
            "{error}"
        );
    }

    #[test]
    fn empty_set() {
        let set = TraitRules::compile([]).unwrap();
        assert!(set.is_empty());
        let mut out = Vec::new();
        set.qualify(1, &signals(&[("a", "1")]), &mut Scratch::new(), &mut out);
        assert!(out.is_empty());
    }

    /// Every rule of `ds` evaluated in full, without the index or the one-atom shortcut: what
    /// `qualify` must give.
    fn unindexed(set: &TraitRules, ds: Dpid, line: &[Signal<'_>]) -> Vec<(TraitId, u32)> {
        let mut scratch = Scratch::new();
        scratch.begin(set.rules.len(), set.atoms.len());
        for &(_, _, value) in line {
            let shape = Shape::prepare(value, &mut scratch.line.buf);
            scratch.line.shapes.push(shape);
        }
        let call = Call {
            signals: line,
            line: &scratch.line,
            generation: scratch.generation,
        };
        let mut out = Vec::new();
        for rule in set.rules.iter().filter(|r| r.ds == ds) {
            if !set.eval(&rule.root, &call, &mut scratch.memo) {
                continue;
            }
            let mut items = Vec::new();
            set.used_items(&rule.root, true, &call, &mut scratch.memo, &mut items);
            items.sort_unstable();
            items.dedup();
            if items.is_empty() {
                out.push((rule.trait_id, NO_ITEM));
            }
            out.extend(items.into_iter().map(|item| (rule.trait_id, item)));
        }
        out
    }

    proptest::proptest! {
        /// The index, the one-atom shortcut and the signals left unanalysed change nothing:
        /// random rules (one atom, or AND/OR/NOT of a few, over two data sources) against
        /// random lines, a signal repeated at times, scratch reused across lines.
        #[test]
        fn qualify_matches_every_rule_evaluated(
            rules_spec in proptest::collection::vec(
                (0u8..6, proptest::collection::vec((0usize..3, 0usize..5, 0usize..4), 1..4), 1u32..3),
                1..24,
            ),
            lines in proptest::collection::vec(
                (1u32..3, proptest::collection::vec((0usize..4, 0usize..4), 0..6)),
                1..8,
            ),
        ) {
            // Lines also have a key no rule reads.
            const KEYS: [&str; 4] = ["ic", "a", "b", "z"];
            const OPS: [&str; 5] = ["==", "!=", ">", "contains", "=="];
            const VALUES: [&str; 4] = ["1", "1.0", "x", "20"];
            let texts: Vec<(TraitId, Dpid, String)> = rules_spec
                .iter()
                .enumerate()
                .map(|(i, (shape, atoms, ds))| {
                    let atoms: Vec<String> = atoms
                        .iter()
                        .map(|&(k, o, v)| format!(r#"{} {} "{}""#, KEYS[k], OPS[o], VALUES[v]))
                        .collect();
                    let text = match shape {
                        0..=2 => atoms[0].clone(),
                        3 => atoms.join(" AND "),
                        4 => atoms.join(" OR "),
                        _ => format!("NOT ({})", atoms.join(" OR ")),
                    };
                    (100 + i as TraitId, *ds, text)
                })
                .collect();
            let set = TraitRules::compile(texts.iter().map(|(t, d, r)| (*t, *d, r.as_str())))
                .unwrap_or_else(|e| panic!("{e:?}"));
            let mut scratch = Scratch::new();
            for (ds, pairs) in &lines {
                let pairs: Vec<(&str, &str)> =
                    pairs.iter().map(|&(k, v)| (KEYS[k], VALUES[v])).collect();
                // Item indexes are not positions: the parser gives items' places on the line.
                let line: Vec<Signal<'_>> = signals(&pairs)
                    .into_iter()
                    .map(|(i, k, v)| (3 * i + 1, k, v))
                    .collect();
                let mut out = Vec::new();
                set.qualify(*ds, &line, &mut scratch, &mut out);
                proptest::prop_assert_eq!(out, unindexed(&set, *ds, &line), "{:?} {:?}", texts, pairs);
            }
        }
    }
}
