//! The CubeCL attention kernels under burn's `Fusion` wrapper, the one burn's own `Wgpu` and
//! `Cuda` aliases add: burn fuses the elementwise ops around the kernels (RMSNorm, SwiGLU,
//! RoPE, residuals, AdamW) into few GPU kernels, and each attention call, forward or backward,
//! is one custom operation in fusion's stream that runs the inner backend's kernel.

use std::iter::once;
use std::marker::PhantomData;

use burn::tensor::ops::FloatTensor;
use burn::tensor::DType;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::super::device::{AttentionOp, DeviceForward};
use super::super::KernelBackend;

/// burn's wgpu backend with its `Fusion` wrapper: [`super::Wgpu`] with fused elementwise ops.
#[cfg(feature = "wgpu")]
pub type FusedWgpu = Fusion<super::Wgpu>;

/// burn's CUDA backend with its `Fusion` wrapper: [`super::Cuda`] with fused elementwise ops.
#[cfg(feature = "cuda")]
pub type FusedCuda = Fusion<super::Cuda>;

impl<B: FusionBackend + KernelBackend> KernelBackend for Fusion<B> {
    const HOST_KERNELS: bool = false;

    const DEVICE_KERNELS: bool = B::DEVICE_KERNELS;

    fn device_forward(
        attention: AttentionOp,
        inputs: Vec<FloatTensor<Self>>,
    ) -> DeviceForward<Self> {
        let shape = inputs[0].shape.clone();
        let client = inputs[0].client.clone();
        let out = TensorIr::uninit(client.create_empty_handle(), shape.clone(), inputs[0].dtype);
        let saved = attention
            .saved_shapes(shape.dims())
            .into_iter()
            .map(|s| TensorIr::uninit(client.create_empty_handle(), s, DType::F32));
        let outputs: Vec<_> = once(out).chain(saved).collect();
        let mut results = register::<B>(attention, Pass::Forward, inputs, outputs);
        let out = results.remove(0);
        (out, results)
    }

    fn device_backward(
        attention: AttentionOp,
        inputs: Vec<FloatTensor<Self>>,
        out: FloatTensor<Self>,
        saved: Vec<FloatTensor<Self>>,
        d_out: FloatTensor<Self>,
    ) -> Vec<FloatTensor<Self>> {
        // One gradient per input, of its shape and float type.
        let client = inputs[0].client.clone();
        let grads = inputs
            .iter()
            .map(|x| TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype))
            .collect();
        let all = inputs
            .into_iter()
            .chain(once(out))
            .chain(saved)
            .chain(once(d_out));
        register::<B>(attention, Pass::Backward, all.collect(), grads)
    }
}

#[derive(Debug, Clone, Copy)]
enum Pass {
    /// Inputs: the kernel's inputs. Outputs: its output, then what it saves.
    Forward,
    /// Inputs: the kernel's inputs, its output, what it saved, `d_out`. Outputs: the gradients.
    Backward,
}

/// Queues one kernel call in fusion's stream and returns its outputs.
fn register<B: FusionBackend + KernelBackend>(
    attention: AttentionOp,
    pass: Pass,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    outputs: Vec<TensorIr>,
) -> Vec<FloatTensor<Fusion<B>>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(&inputs);
    let inputs: Vec<_> = inputs.into_iter().map(|x| x.into_ir()).collect();
    let id = match pass {
        Pass::Forward => "castle_device_attention_forward",
        Pass::Backward => "castle_device_attention_backward",
    };
    let desc = CustomOpIr::new(id, &inputs, &outputs);
    let call = Call::<B> {
        desc: desc.clone(),
        attention,
        pass,
        backend: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), call)
}

/// One kernel call as fusion runs it, on the inner backend's tensors.
#[derive(Debug)]
struct Call<B> {
    desc: CustomOpIr,
    attention: AttentionOp,
    pass: Pass,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + KernelBackend> Operation<B::FusionRuntime> for Call<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let mut xs: Vec<_> = self
            .desc
            .inputs
            .iter()
            .map(|x| handles.get_float_tensor::<B>(x))
            .collect();
        let results = match self.pass {
            Pass::Forward => {
                let (out, saved) = B::device_forward(self.attention, xs);
                once(out).chain(saved).collect()
            }
            Pass::Backward => {
                let d_out = xs.pop().expect("d_out");
                let saved = xs.split_off(self.attention.inputs() + 1);
                let out = xs.pop().expect("out");
                B::device_backward(self.attention, xs, out, saved, d_out)
            }
        };
        for (ir, x) in self.desc.outputs.iter().zip(results) {
            handles.register_float_tensor::<B>(&ir.id, x);
        }
    }
}
