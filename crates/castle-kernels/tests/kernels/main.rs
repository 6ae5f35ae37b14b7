//! castle-kernels' integration tests in one binary: the fused CPU kernels against the tensor-op
//! references and the slow f64 reference, and (features `wgpu`, `cuda`) the CubeCL kernels
//! against the CPU kernels.

mod common;

mod cube_castle;
mod cube_kernels;
mod decode;
mod fusion;
mod kernels;
