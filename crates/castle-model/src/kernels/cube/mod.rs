//! CubeCL kernels: the attentions on `CubeBackend<R, ..>`, generic over the runtime (wgpu, CUDA).

pub mod castle;
