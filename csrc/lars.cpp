// Fused CPU step of skelcl.optim.LARS (SimCLR semantics, see skelcl/optim/lars.py), all tensors of
// one parameter group in two passes over memory instead of one pass per foreach operation:
//
//   pass 1 (adapted tensors only): one read of w and g gives ||w||^2 and ||g'||^2, g' = g + wd * w
//           (g' is formed per element, so there is no cancellation as in expanding the square;
//           sums in the tensor's type over blocks of 1024 elements, in double across blocks);
//   trust  = eta * ||w|| / (||g'|| + eps), 1 when either norm is 0; clip: min(trust / lr, 1);
//   pass 2 (all tensors): u = trust * g' (adapted) or g (excluded); v <- m * v + u;
//           w <- w - lr * v, or w - lr * (u + m * v) with nesterov.
//
//   skelcl::lars_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_bufs,
//                      int n_adapted, float lr, float momentum, float weight_decay,
//                      float trust_coefficient, float eps, bool clip, bool nesterov) -> ()
//
// The first n_adapted tensors are adapted, the rest are excluded (plain momentum SGD). All tensors
// are contiguous CPU float32 or float64 tensors of one dtype; grads and buffers have the shapes of
// their parameters. A zero momentum buffer gives the first step's v = u exactly (m * 0 + u == u).
//
// The work is cut into fixed chunks of at most kChunk elements (a tensor gives one or more), run in
// parallel with dynamic scheduling. Each chunk sums its squares into its own slot and a
// tensor's slots are added in order afterwards, so the norms do not depend on the thread count.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t kChunk = 1 << 14;
constexpr int64_t kSegment = 1 << 16;
constexpr int64_t kBlock = 1024;

struct Chunk {
  int64_t tensor, begin, end;
};

template <typename F>
void run_chunks(int64_t n, const F& f) {
#ifdef _OPENMP
  const int threads = at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), n);
  if (threads > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t k = 0; k < n; ++k) f(k);
    return;
  }
#endif
  for (int64_t k = 0; k < n; ++k) f(k);
}

// 32-byte vectors of the GCC/Clang vector extension (lowered to whatever the target has).
template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(32))); };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(32))); };

// Sums of w^2 and (g + wd * w)^2 over [0, n) into out[0], out[1]. Vector accumulators of the
// tensor's type run over blocks of kBlock elements and are added into double after each block, so
// a float32 partial sum never has more than kBlock / 16 terms.
template <typename scalar_t>
void squares(const scalar_t* __restrict w, const scalar_t* __restrict g, int64_t n, scalar_t wd,
             double* out) {
  using vec = typename Vec<scalar_t>::type;
  constexpr int64_t L = sizeof(vec) / sizeof(scalar_t), step = 2 * L;
  double tw = 0, tg = 0;
  int64_t i = 0;
  while (i + step <= n) {
    vec sw0 = {}, sw1 = {}, sg0 = {}, sg1 = {};
    const int64_t stop = std::min(n - n % step, i + kBlock);
    for (; i < stop; i += step) {
      vec a0, a1, b0, b1;
      std::memcpy(&a0, w + i, sizeof(vec));
      std::memcpy(&a1, w + i + L, sizeof(vec));
      std::memcpy(&b0, g + i, sizeof(vec));
      std::memcpy(&b1, g + i + L, sizeof(vec));
      b0 = b0 + wd * a0;
      b1 = b1 + wd * a1;
      sw0 += a0 * a0;
      sw1 += a1 * a1;
      sg0 += b0 * b0;
      sg1 += b1 * b1;
    }
    for (int64_t l = 0; l < L; ++l) {
      tw += static_cast<double>(sw0[l] + sw1[l]);
      tg += static_cast<double>(sg0[l] + sg1[l]);
    }
  }
  for (; i < n; ++i) {
    const scalar_t b = g[i] + wd * w[i];
    tw += static_cast<double>(w[i]) * static_cast<double>(w[i]);
    tg += static_cast<double>(b) * static_cast<double>(b);
  }
  out[0] = tw;
  out[1] = tg;
}

// One chunk of pass 2. The operation order follows the reference: u = g' * trust, v = v * m + u,
// w = w - lr * v (nesterov: w - lr * (u + m * v)).
template <typename scalar_t, bool adapted, bool nesterov>
void update(scalar_t* __restrict w, const scalar_t* __restrict g, scalar_t* __restrict v, int64_t n,
            scalar_t lr, scalar_t m, scalar_t wd, scalar_t trust) {
  for (int64_t i = 0; i < n; ++i) {
    scalar_t u = g[i];
    if (adapted) u = (u + wd * w[i]) * trust;
    const scalar_t vn = v[i] * m + u;
    v[i] = vn;
    w[i] = w[i] - lr * (nesterov ? u + m * vn : vn);
  }
}

template <typename scalar_t>
void lars_kernel(at::TensorList params, at::TensorList grads, at::TensorList bufs, int64_t n_adapted,
                 double lr, double momentum, double weight_decay, double trust_coefficient, double eps,
                 bool clip, bool nesterov) {
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<scalar_t*> wp(n), vp(n);
  std::vector<const scalar_t*> gp(n);
  for (int64_t i = 0; i < n; ++i) {
    wp[i] = params[i].data_ptr<scalar_t>();
    gp[i] = grads[i].const_data_ptr<scalar_t>();
    vp[i] = bufs[i].data_ptr<scalar_t>();
  }
  // Chunks in tensor order, grouped into segments of whole tensors of about kSegment elements
  // (adapted and excluded tensors never share one): both passes run over a segment while its
  // w and g still sit in cache, so each element is read from memory about once per step.
  std::vector<Chunk> chunks;
  std::vector<int64_t> segments{0};  // chunk index where each segment starts, then the end
  int64_t in_segment = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    if (in_segment > 0 && (in_segment + numel > kSegment || i == n_adapted)) {
      segments.push_back(static_cast<int64_t>(chunks.size()));
      in_segment = 0;
    }
    for (int64_t b = 0; b < numel; b += kChunk) chunks.push_back({i, b, std::min(b + kChunk, numel)});
    in_segment += numel;
  }
  segments.push_back(static_cast<int64_t>(chunks.size()));

  const scalar_t wd = static_cast<scalar_t>(weight_decay);
  const scalar_t lr_s = static_cast<scalar_t>(lr), m = static_cast<scalar_t>(momentum);
  std::vector<scalar_t> trust(n, scalar_t(1));
  std::vector<double> partial(2 * chunks.size());
  for (size_t s = 0; s + 1 < segments.size(); ++s) {
    const int64_t c0 = segments[s], c1 = segments[s + 1];
    if (c0 == c1) continue;
    if (chunks[c0].tensor < n_adapted) {
      // Pass 1: per-chunk sums of squares, added in chunk order; one trust ratio per tensor.
      run_chunks(c1 - c0, [&](int64_t k) {
        const Chunk& c = chunks[c0 + k];
        squares(wp[c.tensor] + c.begin, gp[c.tensor] + c.begin, c.end - c.begin, wd, &partial[2 * (c0 + k)]);
      });
      for (int64_t k = c0; k < c1;) {
        const int64_t i = chunks[k].tensor;
        double sw = 0, sg = 0;
        for (; k < c1 && chunks[k].tensor == i; ++k) {
          sw += partial[2 * k];
          sg += partial[2 * k + 1];
        }
        const double w_norm = std::sqrt(sw), g_norm = std::sqrt(sg);
        double t = 1.0;
        if (w_norm > 0 && g_norm > 0) t = trust_coefficient * w_norm / (g_norm + eps);
        if (clip) t = std::min(t / lr, 1.0);
        trust[i] = static_cast<scalar_t>(t);
      }
    }
    // Pass 2: the update.
    run_chunks(c1 - c0, [&](int64_t k) {
      const Chunk& c = chunks[c0 + k];
      const int64_t i = c.tensor, len = c.end - c.begin;
      scalar_t* w = wp[i] + c.begin;
      const scalar_t* g = gp[i] + c.begin;
      scalar_t* v = vp[i] + c.begin;
      if (i < n_adapted) {
        if (nesterov) update<scalar_t, true, true>(w, g, v, len, lr_s, m, wd, trust[i]);
        else update<scalar_t, true, false>(w, g, v, len, lr_s, m, wd, trust[i]);
      } else {
        if (nesterov) update<scalar_t, false, true>(w, g, v, len, lr_s, m, wd, trust[i]);
        else update<scalar_t, false, false>(w, g, v, len, lr_s, m, wd, trust[i]);
      }
    });
  }
}

void lars_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs, int64_t n_adapted,
                   double lr, double momentum, double weight_decay, double trust_coefficient, double eps,
                   bool clip, bool nesterov) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && bufs.size() == n,
              "lars_step_: params, grads and momentum_bufs must have the same length");
  TORCH_CHECK(n_adapted >= 0 && n_adapted <= static_cast<int64_t>(n), "lars_step_: n_adapted out of range");
  if (n == 0) return;
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "lars_step_: float32 or float64 tensors only");
  for (size_t i = 0; i < n; ++i) {
    for (const at::Tensor* t : {&params[i], &grads[i], &bufs[i]}) {
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype && t->is_contiguous() &&
                      t->sizes() == params[i].sizes(),
                  "lars_step_: tensor ", i, " must be a contiguous CPU tensor of the parameter's shape and dtype");
    }
  }
  if (dtype == at::kFloat) {
    lars_kernel<float>(params, grads, bufs, n_adapted, lr, momentum, weight_decay, trust_coefficient, eps,
                       clip, nesterov);
  } else {
    lars_kernel<double>(params, grads, bufs, n_adapted, lr, momentum, weight_decay, trust_coefficient, eps,
                        clip, nesterov);
  }
  // Written through raw pointers: bump the version counters as an in-place ATen op would.
  for (size_t i = 0; i < n; ++i) {
    torch::autograd::impl::bump_version(params[i]);
    torch::autograd::impl::bump_version(bufs[i]);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skelcl, m) {
  m.def("lars_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_bufs, int n_adapted, "
        "float lr, float momentum, float weight_decay, float trust_coefficient, float eps, bool clip, "
        "bool nesterov) -> ()");
}

TORCH_LIBRARY_IMPL(skelcl, CPU, m) {
  m.impl("lars_step_", &lars_step_cpu);
}
