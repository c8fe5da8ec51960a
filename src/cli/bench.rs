//! `gdn bench kernels`: the CUDA delta rule kernels at the peer FLA benchmark's shapes, eager and
//! from a CUDA graph, against their FLOP/byte floors (see `gdn::cuda::bench`, docs/perf.md).

pub use gdn::cuda::bench::{run, BenchArgs};
