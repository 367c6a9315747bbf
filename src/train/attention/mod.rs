//! Causal grouped-query attention for training, tiled and balanced over rayon's threads.
//!
//! Queries are processed in blocks of `BLOCK` rows and keys in tiles of `KEY_TILE`; the query
//! heads that share a kv head are stacked, so each score tile [group·BLOCK, KEY_TILE] is one
//! GEMM that packs K (and V) once for the group. No [seq × seq] matrix per head is ever
//! stored. Forward keeps only the per-(row, head) log-sum-exp (online softmax across key
//! tiles); backward recomputes the probabilities tile by tile.
//!
//! Work split (2 threads must both stay busy on one 256-token record with 9 heads):
//! - forward: one task per (segment, kv head, query block), owning its output rows;
//! - backward: one task per (segment, kv head, query chunk), the chunks cut so that each has
//!   about the same causal work. A task owns dQ of its query rows and accumulates dK, dV of the
//!   keys it sees into its own partial buffer; a second pass sums the partials of each key row
//!   in chunk order. Every output element is thus reduced in a fixed order whatever the thread
//!   count or schedule: results are deterministic.
//!
//! Tasks are handed out largest first to whichever thread is free (`run_tasks`). Buffers come
//! from per-thread free lists (`with_scratch`) that keep their capacity across calls, so the
//! steady state allocates nothing. K and V are copied head-major once per call; query-side rows
//! are gathered per block.
//!
//! The same block kernel serves inference with a KV cache (`attend_head`: the n new queries are
//! the last n of L cached keys, `offset = L − n`).
//!
//! Files: `shape` (the call's shapes), `tiling` (tile sizes, the causal/window limit, row
//! copies), `schedule` (tasks, per-thread scratch, the shared output buffer), `forward`,
//! `backward`, `tests`.

mod backward;
mod forward;
mod schedule;
mod shape;
mod tiling;

pub use backward::attention_backward;
pub use forward::{attend_head, attention_forward};
pub use shape::AttnShape;
pub use tiling::{gather, BLOCK};

#[cfg(test)]
mod tests;
