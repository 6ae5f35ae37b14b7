//! The CPU backends' decoding step: the model's weights read once into host memory, and a step
//! that runs each stage of every block for the new tokens of a batch in one pass, on host
//! buffers kept from step to step: RMSNorm, the layer's fused projection, RoPE with the cache
//! update and attention ([`decode_attention`]), the output projection, SwiGLU with its gate and
//! up projections as one product, and after the last block the final norm and the head. Once
//! the buffers have grown to the batch, a step allocates nothing but its list of the batch's
//! caches.

use burn::tensor::Element;
use rayon::prelude::*;

use castle_kernels::host::decode::CacheShape;
use castle_kernels::host::decode_layer::{decode_attention, LayerCache};
use castle_kernels::host::gemm::transposed;
use castle_kernels::host::host_array::to_host as host;
use castle_kernels::host::projection::Projection;
use castle_kernels::host::rmsnorm::rms_norm_row;
use castle_kernels::host::simd::vectorized;
use castle_kernels::host::swiglu::silu_gate;
use castle_kernels::rope::Rope;
use castle_kernels::{AttentionOp, Elem, KernelBackend};

use crate::attention::AttentionCache;
use crate::lm::{Attention, Block, CastleLm, LmCache};

/// One block's weights: `[d_in, d_out]` projections, `gate_up` the MLP's gate and up
/// projections side by side (`[d_model, 2 hidden]`).
struct HostBlock<E> {
    attn_norm: Vec<E>,
    proj: Projection<E>,
    out: Projection<E>,
    mlp_norm: Vec<E>,
    gate_up: Projection<E>,
    down: Projection<E>,
}

/// The step's buffers, rows of the batch: `x` the residual stream, `h` its norm, `y` a
/// projection's output, `yt` a projection's scratch ([`Projection::apply`]), `rot` RoPE's, `o`
/// the attention's, `a` a sublayer's output.
#[derive(Default)]
struct Buffers<E> {
    x: Vec<E>,
    h: Vec<E>,
    y: Vec<E>,
    yt: Vec<E>,
    rot: Vec<E>,
    o: Vec<E>,
    a: Vec<E>,
}

/// The model's weights on the host.
struct HostLm<E> {
    embed: Vec<E>,
    blocks: Vec<HostBlock<E>>,
    norm: Vec<E>,
    head: Projection<E>,
    eps: f64,
    rope: Rope,
    shape: CacheShape,
    /// The widest projection output per row (the buffers `y` and `yt` hold rows of it).
    widest: usize,
}

/// The model on the host, the caches of its sequences by slot (a finished sequence's are
/// reused by the next), and the step's buffers, one set per group of rows.
pub(crate) struct HostDecoder<E> {
    lm: HostLm<E>,
    op: AttentionOp,
    caches: Vec<Vec<LayerCache<E>>>,
    buffers: Vec<Buffers<E>>,
}

impl<E: Elem + Element> HostDecoder<E> {
    pub(crate) fn new<B: KernelBackend>(model: &CastleLm<B>) -> Self {
        let c = &model.config;
        let (d_model, hidden) = (c.d_model, c.mlp_hidden());
        let linear = |l: &burn::nn::Linear<B>| {
            let [d_in, d_out] = l.weight.dims();
            Projection::new(host(l.weight.val()), d_in, d_out)
        };
        let blocks = model.blocks.iter().map(|b: &Block<B>| {
            let (proj, out) = match &b.attn {
                Attention::Baseline(a) => (&a.qkv, &a.out),
                Attention::Castle(a) => (&a.in_proj, &a.out),
            };
            let (gate, up): (Vec<E>, Vec<E>) =
                (host(b.mlp.gate.weight.val()), host(b.mlp.up.weight.val()));
            let gate_up = gate
                .chunks(hidden)
                .zip(up.chunks(hidden))
                .flat_map(|(g, u)| g.iter().chain(u))
                .copied()
                .collect();
            HostBlock {
                attn_norm: host(b.attn_norm.gamma.val()),
                proj: linear(proj),
                out: linear(out),
                mlp_norm: host(b.mlp_norm.gamma.val()),
                gate_up: Projection::new(gate_up, d_model, 2 * hidden),
                down: linear(&b.mlp.down),
            }
        });
        let embed: Vec<E> = host(model.embed.weight.val());
        let vocab = model.vocab_size();
        let head = match &model.lm_head {
            Some(head) => linear(head),
            None => Projection::new(transposed(&embed, vocab, d_model), d_model, vocab),
        };
        let op = match &model.blocks.first().map(|b| &b.attn) {
            Some(Attention::Castle(a)) => AttentionOp::Castle { window: a.window },
            _ => AttentionOp::Causal,
        };
        let blocks: Vec<HostBlock<E>> = blocks.collect();
        let widest = blocks
            .iter()
            .flat_map(|b| [&b.proj, &b.out, &b.gate_up, &b.down])
            .chain([&head])
            .map(|p| p.d_out())
            .max()
            .unwrap_or(0);
        let lm = HostLm {
            blocks,
            widest,
            norm: host(model.norm.gamma.val()),
            eps: model.norm.eps,
            embed,
            head,
            rope: model.rope.clone(),
            shape: CacheShape {
                heads: c.n_heads(),
                d: c.head_dim,
                capacity: c.max_seq_len,
            },
        };
        Self {
            lm,
            op,
            caches: vec![],
            buffers: vec![],
        }
    }

    /// Moves a prompt's cache (`LmCache` of batch 1, from the model's prefill) into `slot`.
    pub(crate) fn start<B: KernelBackend>(&mut self, slot: usize, prompt: LmCache<B>) {
        while self.caches.len() <= slot {
            let layers = self.lm.blocks.len();
            let new = || LayerCache::new(self.op, self.lm.shape);
            self.caches.push((0..layers).map(|_| new()).collect());
        }
        let n = prompt.len();
        for (cache, layer) in self.caches[slot].iter_mut().zip(prompt.layers) {
            cache.clear();
            match (cache, layer) {
                (LayerCache::Kv(cache), AttentionCache::Kv(kv)) => {
                    let [k, v] = kv.rows().map(host::<B, E, 4>);
                    cache.extend(&k, &v, n);
                }
                (LayerCache::UqKv(cache), AttentionCache::UqKv(uq_kv)) => {
                    let [u, qu, kc, vc] = uq_kv.rows().map(host::<B, E, 4>);
                    cache.prefill([&u, &qu, &kc, &vc], n);
                }
                // The decoder and the prefill come from the same model, so a layer's two caches
                // are always of one kind.
                _ => unreachable!("a prompt's cache of another model"),
            }
        }
    }

    /// One new token per sequence of `batch` (distinct slots, each with room for one more
    /// position): their logits `[n, vocab]` into `logits`. A batch of at least two rows per
    /// worker is split into one group of rows per worker, each running the whole step on its
    /// own buffers, so that the workers meet once per step rather than at every product;
    /// a smaller one runs each product and attention on all workers, from inside the pool.
    pub(crate) fn step<L: Elem>(&mut self, batch: &[(usize, u32)], logits: &mut Vec<L>) {
        let n = batch.len();
        // The batch's caches in its order (the decoder checked its slots are distinct).
        let mut slots: Vec<Option<&mut Vec<LayerCache<E>>>> =
            self.caches.iter_mut().map(Some).collect();
        let mut seqs: Vec<&mut [LayerCache<E>]> = batch
            .iter()
            .filter_map(|&(slot, _)| slots[slot].take().map(|c| &mut c[..]))
            .collect();
        assert_eq!(seqs.len(), n, "a batch of distinct running sequences");
        let vocab = self.lm.head.d_out();
        logits.resize(n * vocab, L::zero());
        let workers = rayon::current_num_threads();
        let groups = if n >= 2 * workers { workers } else { 1 };
        let rows = n.div_ceil(groups).max(1);
        self.buffers
            .resize_with(groups.max(self.buffers.len()), Buffers::default);
        let lm = &self.lm;
        if groups == 1 {
            // On one of rayon's workers, so that the step's parallel products and attention
            // split there instead of each waking the pool from outside it.
            let b = &mut self.buffers[0];
            return rayon::scope(|_| lm.rows(batch, &mut seqs, b, logits));
        }
        batch
            .par_chunks(rows)
            .zip(seqs.par_chunks_mut(rows))
            .zip(self.buffers.par_iter_mut())
            .zip(logits.par_chunks_mut(rows * vocab))
            .for_each(|(((batch, seqs), b), logits)| lm.rows(batch, seqs, b, logits));
    }
}

impl<E: Elem> HostLm<E> {
    /// The step for the rows of one group: `seqs[i]` takes token `batch[i]`, its logits row `i`
    /// of `logits`.
    fn rows<L: Elem>(
        &self,
        batch: &[(usize, u32)],
        seqs: &mut [&mut [LayerCache<E>]],
        b: &mut Buffers<E>,
        logits: &mut [L],
    ) {
        let n = batch.len();
        let d_model = self.norm.len();
        let hd = self.shape.heads * self.shape.d;
        for (buf, width) in [
            (&mut b.x, d_model),
            (&mut b.h, d_model),
            (&mut b.y, self.widest),
            (&mut b.yt, self.widest),
            (&mut b.rot, 4 * hd),
            (&mut b.o, hd),
            (&mut b.a, d_model),
        ] {
            buf.resize(n * width, E::zero());
        }
        for (x, &(_, token)) in b.x.chunks_mut(d_model).zip(batch) {
            let t = token as usize;
            x.copy_from_slice(&self.embed[t * d_model..(t + 1) * d_model]);
        }
        for (l, block) in self.blocks.iter().enumerate() {
            // Attention: x += W_O attn(RoPE(W (norm x))).
            norm_rows(&b.x, &block.attn_norm, self.eps, &mut b.h);
            let y = &mut b.y[..n * block.proj.d_out()];
            block.proj.apply(&b.h, n, &mut b.yt, y);
            decode_attention(seqs, l, y, &self.rope, &mut b.rot, &mut b.o);
            block.out.apply(&b.o, n, &mut b.yt, &mut b.a);
            add(&mut b.x, &b.a);
            // MLP: x += W_down (SiLU(x W_gate) (.) x W_up), on the norm of x.
            norm_rows(&b.x, &block.mlp_norm, self.eps, &mut b.h);
            let hidden = block.down.d_in();
            let y = &mut b.y[..n * 2 * hidden];
            block.gate_up.apply(&b.h, n, &mut b.yt, y);
            let gated = gate_rows(y, hidden);
            block.down.apply(gated, n, &mut b.yt, &mut b.a);
            add(&mut b.x, &b.a);
        }
        norm_rows(&b.x, &self.norm, self.eps, &mut b.h);
        let y = &mut b.y[..n * self.head.d_out()];
        self.head.apply(&b.h, n, &mut b.yt, y);
        for (l, &v) in logits.iter_mut().zip(y.iter()) {
            *l = L::of(v.to_f64_exact());
        }
    }
}

/// `h = RMSNorm(x)` row by row.
fn norm_rows<E: Elem>(x: &[E], gamma: &[E], eps: f64, h: &mut [E]) {
    let d = gamma.len();
    vectorized(
        #[inline(always)]
        || {
            for (x, h) in x.chunks(d).zip(h.chunks_mut(d)) {
                rms_norm_row(x, gamma, eps, h);
            }
        },
    );
}

/// `x += y`.
fn add<E: Elem>(x: &mut [E], y: &[E]) {
    vectorized(
        #[inline(always)]
        || x.iter_mut().zip(y).for_each(|(x, &y)| *x = *x + y),
    );
}

/// Rows `[g, u]` of `2 hidden` values to rows `SiLU(g) (.) u` of `hidden`, in place at the
/// front of `y`; returns them.
fn gate_rows<E: Elem>(y: &mut [E], hidden: usize) -> &[E] {
    let n = y.len() / (2 * hidden);
    vectorized(
        #[inline(always)]
        || {
            for i in 0..n {
                for j in 0..hidden {
                    y[i * hidden + j] =
                        silu_gate(y[2 * i * hidden + j], y[(2 * i + 1) * hidden + j]);
                }
            }
        },
    );
    &y[..n * hidden]
}
