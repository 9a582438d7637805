//! A compiled set of segment rules: flat short-circuit code per segment, a trait → segments
//! index, and the evaluator that runs on the hot path (once per changed profile).
//!
//! # Code
//!
//! Each segment's rule becomes a run of [`Op`]s over one boolean register, `acc`. Operands of
//! `AND` are joined by forward "jump to the end if false" instructions, operands of `OR` by
//! "jump to the end if true", so evaluation short-circuits like the recursive definition and
//! needs no stack. Jumps only go forward, so every run ends. A `FREQUENCY` term is an index into
//! a side table whose trait list is sorted and deduplicated at compile time.
//!
//! Evaluating allocates nothing; a trait lookup is one binary search in the profile's slice.

use super::{Expr, FrequencyOp, Recency, SegmentRuleError, parse};
use crate::model::TraitId;

/// One instruction of a segment's code; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `acc = profile holds the trait`.
    Holds(TraitId),
    /// `acc = frequency term #i holds`.
    Frequency(u32),
    /// `acc = !acc`.
    Not,
    /// `acc = constant` (only for an `And`/`Or` without operands, which `parse` never makes).
    Set(bool),
    /// `if !acc { pc = target }`.
    JumpIfFalse(u32),
    /// `if acc { pc = target }`.
    JumpIfTrue(u32),
}

/// A compiled `FREQUENCY(...)` term.
#[derive(Clone, Copy, Debug)]
struct FrequencyTerm {
    /// The listed traits: `traits[start..end]`, sorted and deduplicated.
    start: u32,
    end: u32,
    recency: Option<Recency>,
    op: FrequencyOp,
    count: u32,
}

/// The compiled segment rules of a catalog. Build once per run, share read-only across threads.
#[derive(Clone, Debug, Default)]
pub struct SegmentRules {
    /// Segment ids, sorted.
    ids: Vec<u32>,
    /// Segment `i`'s code is `code[code_start[i]..code_start[i + 1]]`.
    code_start: Vec<u32>,
    code: Vec<Op>,
    frequencies: Vec<FrequencyTerm>,
    /// Trait lists of all frequency terms.
    frequency_traits: Vec<TraitId>,
    /// Every trait some rule mentions, sorted; `touching[touch_start[i]..touch_start[i + 1]]`
    /// are the segments that mention `touched_traits[i]`.
    touched_traits: Vec<TraitId>,
    touch_start: Vec<u32>,
    touching: Vec<u32>,
    /// `touched_traits` addressed directly when the mentioned trait ids are dense enough (see
    /// [`dense_touch_span`]): `touch_slot[t - touch_base]` is 1 + the index of trait `t` in
    /// `touched_traits`, 0 if no rule mentions it. Empty otherwise, and `touching` then
    /// binary-searches. The merge asks `touching` for every changed trait of every changed
    /// profile, and the binary search was a tenth of the merge stage's CPU.
    touch_base: TraitId,
    touch_slot: Vec<u32>,
    /// Segments an empty profile qualifies for, sorted.
    empty_qualifies: Vec<u32>,
    /// Segments with a recency term, sorted.
    time_dependent: Vec<u32>,
}

/// The widest range of mentioned trait ids that [`SegmentRules::touching`] addresses directly
/// for `traits` mentioned traits: 4 bytes a slot, at most 64 KiB more than 16 slots a
/// mentioned trait, so the table stays small next to the rules themselves.
fn dense_touch_span(traits: usize) -> usize {
    traits.saturating_mul(16).saturating_add(1 << 14)
}

/// The compiled code outgrew `u32` indices.
struct TooLarge;

impl SegmentRules {
    /// Parses and compiles `(segment id, rule text)` pairs. On failure, returns one error per
    /// bad rule (the first problem in each) and one per repeated segment id, sorted by segment
    /// id.
    ///
    /// ```
    /// use segmill::rules::segment_rule::SegmentRules;
    /// let rules = SegmentRules::compile([(1001, "(24T AND 26T) OR NOT 27T")]).unwrap();
    /// let mut out = Vec::new();
    /// rules.evaluate(&[1001], &[(24, 0), (26, 0), (27, 0)], 0, &mut out);
    /// assert_eq!(out, [1001]);
    /// ```
    pub fn compile<'a>(
        rules: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> Result<SegmentRules, Vec<SegmentRuleError>> {
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        let mut failed_ids = Vec::new();
        for (segment, text) in rules {
            match parse(text) {
                Ok(expr) => parsed.push((segment, expr)),
                Err(error) => {
                    failed_ids.push(segment);
                    errors.push(SegmentRuleError::Syntax { segment, error });
                }
            }
        }
        match SegmentRules::from_exprs_inner(parsed, &failed_ids) {
            Ok(rules) if errors.is_empty() => Ok(rules),
            Ok(_) => {
                errors.sort_by_key(segment_of);
                Err(errors)
            }
            Err(more) => {
                errors.extend(more);
                errors.sort_by_key(segment_of);
                Err(errors)
            }
        }
    }

    /// Compiles already parsed rules (for callers that build [`Expr`]s themselves). The only
    /// possible errors are repeated segment ids and an absurdly large rule set. Recursion
    /// follows the nesting of each `Expr`: [`parse`] bounds it, hand-built values must too.
    pub fn from_exprs(
        rules: impl IntoIterator<Item = (u32, Expr)>,
    ) -> Result<SegmentRules, Vec<SegmentRuleError>> {
        SegmentRules::from_exprs_inner(rules.into_iter().collect(), &[])
    }

    fn from_exprs_inner(
        mut rules: Vec<(u32, Expr)>,
        failed_ids: &[u32],
    ) -> Result<SegmentRules, Vec<SegmentRuleError>> {
        rules.sort_by_key(|(segment, _)| *segment);
        let mut all_ids: Vec<u32> = rules.iter().map(|(segment, _)| *segment).collect();
        all_ids.extend_from_slice(failed_ids);
        all_ids.sort_unstable();
        let mut errors: Vec<SegmentRuleError> = all_ids
            .windows(2)
            .filter(|pair| pair.first() == pair.last())
            .filter_map(|pair| pair.first().copied())
            .map(|segment| SegmentRuleError::Duplicate { segment })
            .collect();
        errors.dedup();
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut builder = Builder::default();
        builder.rules.ids.reserve(rules.len());
        builder.rules.code_start.reserve(rules.len() + 1);
        builder.rules.code_start.push(0);
        for (segment, expr) in &rules {
            builder.segment = *segment;
            builder.has_recency = false;
            let emitted = builder.emit(expr).and_then(|()| {
                let end = index(builder.rules.code.len())?;
                builder.rules.code_start.push(end);
                Ok(())
            });
            if emitted.is_err() {
                return Err(vec![SegmentRuleError::TooLarge { segment: *segment }]);
            }
            builder.rules.ids.push(*segment);
            if builder.has_recency {
                builder.rules.time_dependent.push(*segment);
            }
        }
        let last = rules.last().map_or(0, |(segment, _)| *segment);
        builder
            .finish()
            .map_err(|TooLarge| vec![SegmentRuleError::TooLarge { segment: last }])
    }

    /// Segments whose rule mentions `trait_id` (sorted segment ids; empty if none).
    pub fn touching(&self, trait_id: TraitId) -> &[u32] {
        let i = if self.touch_slot.is_empty() {
            match self.touched_traits.binary_search(&trait_id) {
                Ok(i) => i,
                Err(_) => return &[],
            }
        } else {
            // Below the base, the difference wraps to a slot past the end.
            match self
                .touch_slot
                .get(trait_id.wrapping_sub(self.touch_base) as usize)
            {
                Some(&slot) if slot > 0 => slot as usize - 1,
                _ => return &[],
            }
        };
        match (self.touch_start.get(i), self.touch_start.get(i + 1)) {
            (Some(&start), Some(&end)) => self
                .touching
                .get(start as usize..end as usize)
                .unwrap_or_default(),
            _ => &[],
        }
    }

    /// Segments that an empty profile qualifies for (e.g. `NOT 27T`): their membership can
    /// change for a profile seen for the first time even if no mentioned trait changed.
    pub fn empty_qualifies(&self) -> &[u32] {
        &self.empty_qualifies
    }

    /// Segments with a recency term (`FREQUENCY([..] <= 7D) ...`): their membership can change
    /// with the as-of time alone, while the profile's traits stay the same. Sorted.
    pub fn time_dependent(&self) -> &[u32] {
        &self.time_dependent
    }

    /// Every trait some rule mentions, sorted (for checking the rules against the catalog).
    pub fn referenced_traits(&self) -> &[TraitId] {
        &self.touched_traits
    }

    /// All segment ids, sorted.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Replaces `out` with the segments whose membership may differ after the traits in
    /// `changed` (realized, removed, expired or re-realized; any order, repeats allowed)
    /// changed: the union of [`touching`](Self::touching) for each of them, plus
    /// [`empty_qualifies`](Self::empty_qualifies) when the profile is new. Sorted, deduplicated.
    ///
    /// Time alone can also change the segments of [`time_dependent`](Self::time_dependent);
    /// they are not added here.
    pub fn candidates(&self, changed: &[TraitId], new_profile: bool, out: &mut Vec<u32>) {
        out.clear();
        if new_profile {
            out.extend_from_slice(&self.empty_qualifies);
        }
        for &trait_id in changed {
            out.extend_from_slice(self.touching(trait_id));
        }
        out.sort_unstable();
        out.dedup();
    }

    /// Evaluates the segments of `candidates` (sorted, deduplicated ids; ids of no segment are
    /// skipped) for one profile and pushes the qualified ones onto `out`, in order. `traits`
    /// holds the profile's unexpired traits with their realization times, sorted by trait id,
    /// each trait once. `as_of` is the run's as-of time (seconds since the epoch).
    pub fn evaluate(
        &self,
        candidates: &[u32],
        traits: &[(TraitId, i64)],
        as_of: i64,
        out: &mut Vec<u32>,
    ) {
        let mut from = 0;
        for &segment in candidates {
            let rest = self.ids.get(from..).unwrap_or_default();
            match rest.binary_search(&segment) {
                Ok(i) => {
                    let index = from + i;
                    from = index + 1;
                    if self.qualifies(index, traits, as_of) {
                        out.push(segment);
                    }
                }
                Err(i) => from += i,
            }
        }
    }

    /// Runs the code of the segment at `index` of `ids`.
    fn qualifies(&self, index: usize, traits: &[(TraitId, i64)], as_of: i64) -> bool {
        let (Some(&start), Some(&end)) =
            (self.code_start.get(index), self.code_start.get(index + 1))
        else {
            return false;
        };
        let end = end as usize;
        let mut acc = false;
        let mut pc = start as usize;
        while pc < end {
            let Some(&op) = self.code.get(pc) else {
                break;
            };
            pc += 1;
            match op {
                Op::Holds(trait_id) => {
                    acc = traits
                        .binary_search_by_key(&trait_id, |&(id, _)| id)
                        .is_ok();
                }
                Op::Frequency(i) => acc = self.frequency_holds(i, traits, as_of),
                Op::Not => acc = !acc,
                Op::Set(value) => acc = value,
                Op::JumpIfFalse(target) => {
                    if !acc {
                        pc = target as usize;
                    }
                }
                Op::JumpIfTrue(target) => {
                    if acc {
                        pc = target as usize;
                    }
                }
            }
        }
        acc
    }

    /// `count OP n` for frequency term `i`, counting each listed trait once.
    fn frequency_holds(&self, i: u32, traits: &[(TraitId, i64)], as_of: i64) -> bool {
        let Some(term) = self.frequencies.get(i as usize) else {
            return false;
        };
        let listed = self
            .frequency_traits
            .get(term.start as usize..term.end as usize)
            .unwrap_or_default();
        let cutoff = term.recency.map(|r| (r.op, r.cutoff(as_of)));
        let passes = |realized_at: i64| match cutoff {
            None => true,
            Some((op, cutoff)) => op.passes(realized_at, cutoff),
        };
        // Walk the shorter side, binary-search the longer one.
        let count = if listed.len() <= traits.len() {
            listed
                .iter()
                .filter_map(|&t| {
                    let i = traits.binary_search_by_key(&t, |&(id, _)| id).ok()?;
                    traits.get(i)
                })
                .filter(|&&(_, realized_at)| passes(realized_at))
                .count()
        } else {
            traits
                .iter()
                .filter(|&&(t, realized_at)| {
                    listed.binary_search(&t).is_ok() && passes(realized_at)
                })
                .count()
        };
        term.op
            .holds(u32::try_from(count).unwrap_or(u32::MAX), term.count)
    }
}

fn segment_of(error: &SegmentRuleError) -> u32 {
    match *error {
        SegmentRuleError::Syntax { segment, .. }
        | SegmentRuleError::Duplicate { segment }
        | SegmentRuleError::TooLarge { segment } => segment,
    }
}

fn index(len: usize) -> Result<u32, TooLarge> {
    u32::try_from(len).map_err(|_| TooLarge)
}

/// Compile-time state: the rules being filled, the segment being emitted, and the
/// (trait, segment) pairs that become the `touching` index.
#[derive(Default)]
struct Builder {
    rules: SegmentRules,
    segment: u32,
    has_recency: bool,
    touches: Vec<(TraitId, u32)>,
    /// Reused to sort and deduplicate one frequency term's traits.
    scratch: Vec<TraitId>,
}

impl Builder {
    /// Appends code that leaves the value of `expr` in `acc`.
    fn emit(&mut self, expr: &Expr) -> Result<(), TooLarge> {
        match expr {
            Expr::Trait(trait_id) => {
                self.touches.push((*trait_id, self.segment));
                self.rules.code.push(Op::Holds(*trait_id));
            }
            Expr::Frequency(freq) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(&freq.traits);
                self.scratch.sort_unstable();
                self.scratch.dedup();
                let start = index(self.rules.frequency_traits.len())?;
                self.rules.frequency_traits.extend_from_slice(&self.scratch);
                let end = index(self.rules.frequency_traits.len())?;
                for &trait_id in &self.scratch {
                    self.touches.push((trait_id, self.segment));
                }
                self.has_recency |= freq.recency.is_some();
                let term = index(self.rules.frequencies.len())?;
                self.rules.frequencies.push(FrequencyTerm {
                    start,
                    end,
                    recency: freq.recency,
                    op: freq.op,
                    count: freq.count,
                });
                self.rules.code.push(Op::Frequency(term));
            }
            Expr::Not(inner) => {
                self.emit(inner)?;
                self.rules.code.push(Op::Not);
            }
            Expr::And(operands) => self.emit_chain(operands, true)?,
            Expr::Or(operands) => self.emit_chain(operands, false)?,
        }
        Ok(())
    }

    /// `AND` (`all`) or `OR` of `operands`, short-circuiting to the end of the chain.
    fn emit_chain(&mut self, operands: &[Expr], all: bool) -> Result<(), TooLarge> {
        let Some((last, init)) = operands.split_last() else {
            self.rules.code.push(Op::Set(all));
            return Ok(());
        };
        let mut jumps = Vec::with_capacity(init.len());
        for operand in init {
            self.emit(operand)?;
            jumps.push(self.rules.code.len());
            // Placeholder target, patched below once the chain's end is known.
            self.rules.code.push(Op::Set(all));
        }
        self.emit(last)?;
        let end = index(self.rules.code.len())?;
        for at in jumps {
            if let Some(op) = self.rules.code.get_mut(at) {
                *op = if all {
                    Op::JumpIfFalse(end)
                } else {
                    Op::JumpIfTrue(end)
                };
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<SegmentRules, TooLarge> {
        self.touches.sort_unstable();
        self.touches.dedup();
        let rules = &mut self.rules;
        rules.touching.reserve(self.touches.len());
        for &(trait_id, segment) in &self.touches {
            if rules.touched_traits.last() != Some(&trait_id) {
                rules.touched_traits.push(trait_id);
                rules.touch_start.push(index(rules.touching.len())?);
            }
            rules.touching.push(segment);
        }
        rules.touch_start.push(index(rules.touching.len())?);
        if let (Some(&first), Some(&last)) =
            (rules.touched_traits.first(), rules.touched_traits.last())
        {
            let span = (last - first) as usize + 1;
            if span <= dense_touch_span(rules.touched_traits.len()) {
                rules.touch_base = first;
                rules.touch_slot = vec![0; span];
                for (i, &t) in rules.touched_traits.iter().enumerate() {
                    rules.touch_slot[(t - first) as usize] = index(i + 1)?;
                }
            }
        }
        // An empty profile holds nothing, so the as-of time does not matter.
        let empty_qualifies = (0..rules.ids.len())
            .filter(|&i| rules.qualifies(i, &[], 0))
            .filter_map(|i| rules.ids.get(i).copied())
            .collect();
        rules.empty_qualifies = empty_qualifies;
        Ok(self.rules)
    }
}
