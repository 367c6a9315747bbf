//! Packing examples into token batches. Several records share one flat token array; each keeps
//! its own positions (from 0) and attention never crosses a record boundary.

use crate::data::Example;

/// One record's place in a packed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
}

/// A packed micro-batch.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,    // [T]
    pub positions: Vec<u32>, // [T], restarting at 0 in every segment
    pub segments: Vec<Segment>,
    /// Rows whose hidden state predicts a scored token: (row, target id). Row `t - 1` predicts
    /// token `t` of its segment, so a segment's last row never predicts anything.
    pub scored: Vec<(usize, u32)>,
    /// For each scored entry, the index of its segment (per-record losses).
    pub scored_segment: Vec<usize>,
}

impl Batch {
    pub fn push(&mut self, ex: &Example) {
        let start = self.tokens.len();
        let seg = self.segments.len();
        self.tokens.extend_from_slice(&ex.ids);
        self.positions.extend(0..ex.ids.len() as u32);
        for t in 1..ex.ids.len() {
            if ex.mask[t] {
                self.scored.push((start + t - 1, ex.ids[t]));
                self.scored_segment.push(seg);
            }
        }
        self.segments.push(Segment {
            start,
            len: ex.ids.len(),
        });
    }

    pub fn from_examples<'a>(examples: impl IntoIterator<Item = &'a Example>) -> Self {
        let mut b = Batch::default();
        for ex in examples {
            b.push(ex);
        }
        b
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Group example indices (in the given order) into micro-batches of at most `batch_tokens`
/// tokens each; a record longer than that gets a batch of its own.
pub fn pack_indices(order: &[usize], lens: &[usize], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_len = 0;
    for &i in order {
        let l = lens[i];
        if !cur.is_empty() && cur_len + l > batch_tokens {
            out.push(std::mem::take(&mut cur));
            cur_len = 0;
        }
        cur.push(i);
        cur_len += l;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_order_and_budget() {
        let lens = [5, 3, 8, 2, 9, 1];
        let order = [0, 1, 2, 3, 4, 5];
        let p = pack_indices(&order, &lens, 9);
        assert_eq!(p, vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]);
        let flat: Vec<usize> = p.concat();
        assert_eq!(flat, order);
    }

    #[test]
    fn scored_rows_point_one_before_target() {
        let ex = Example {
            ids: vec![10, 11, 12, 13],
            mask: vec![false, false, true, true],
            line: 1,
        };
        let mut b = Batch::from_examples([&ex, &ex]);
        assert_eq!(b.scored, vec![(1, 12), (2, 13), (5, 12), (6, 13)]);
        assert_eq!(b.positions, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        b.push(&ex);
        assert_eq!(b.segments[2], Segment { start: 8, len: 4 });
    }
}
