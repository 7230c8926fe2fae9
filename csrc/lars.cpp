// Fused CPU step of skelcl.optim.LARS (SimCLR semantics, see skelcl/optim/lars.py), all tensors of
// one parameter group in one call:
//
//   norms  (adapted tensors only): one read of w and g gives ||w||^2 and ||g'||^2, g' = g + wd * w
//           (g' is formed per element, so there is no cancellation as in expanding the square;
//           sums in the tensor's type over blocks of 1024 elements, in double across blocks);
//   trust  = eta * ||w|| / (||g'|| + eps), 1 when either norm is 0; clip: min(trust / lr, 1);
//   update (all tensors): u = trust * g' (adapted) or g (excluded); v <- m * v + u;
//           w <- w - lr * v, or w - lr * (u + m * v) with nesterov.
//
//   skelcl::lars_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_bufs,
//                      int n_adapted, float lr, float momentum, float weight_decay,
//                      float trust_coefficient, float eps, bool clip, bool nesterov) -> bool
//
// The first n_adapted tensors are adapted, the rest are excluded (plain momentum SGD). The kernel
// takes contiguous, dense CPU float32 or float64 tensors of one dtype, grads and buffers shaped like
// their parameters; for anything else it returns false before touching any tensor (the caller then
// takes its foreach path), otherwise it updates params and buffers and returns true. A zero momentum
// buffer gives the first step's v = u exactly (m * 0 + u == u).
//
// Scheduling: one OpenMP parallel region per call (none below kSerial elements in all). A tensor is
// one task: the thread that sums its squares updates it right after, while w and g are still in
// cache (its L2 for tensors up to ~100K float32 elements, the shared L3 beyond), and there is no
// barrier between the two passes. Tasks go largest first with dynamic
// scheduling, so the threads finish together even when one of them is slowed down by other work.
// Tensors larger than total / (2 * threads) (and kSplitMin) would unbalance that; they are cut into
// chunks handled by all threads, with two barriers: sums, then trust ratios, then updates.
//
// Norms are sums of per-chunk partial sums (kChunk elements, fixed) added in chunk order, whichever
// thread computed them, so results do not depend on the thread count or on the scheduling.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kChunk = 1 << 14;     // elements per partial sum of squares
constexpr int64_t kBlock = 1024;        // elements per float32 vector accumulation (see squares)
constexpr int64_t kSerial = 1 << 16;    // below this many elements in all, the calling thread does all
constexpr int64_t kSplitMin = 1 << 18;  // tensors up to this size are never split between threads

// 32-byte vectors of the GCC/Clang vector extension (lowered to whatever the target has).
template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(32))); };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(32))); };

// Sums of w^2 and (g + wd * w)^2 over [0, n) into out[0], out[1]. Vector accumulators of the
// tensor's type run over blocks of kBlock elements and are added into double after each block, so
// a float32 partial sum never has more than kBlock / 16 terms.
template <typename scalar_t>
inline __attribute__((always_inline)) void squares(const scalar_t* __restrict w, const scalar_t* __restrict g,
                                                   int64_t n, scalar_t wd, double* out) {
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

// The update of n elements. The operation order follows the reference: u = g' * trust,
// v = v * m + u, w = w - lr * v (nesterov: w - lr * (u + m * v)).
template <typename scalar_t, bool adapted, bool nesterov>
inline __attribute__((always_inline)) void update(scalar_t* __restrict w, const scalar_t* __restrict g,
                                                  scalar_t* __restrict v, int64_t n, scalar_t lr, scalar_t m,
                                                  scalar_t wd, scalar_t trust) {
  for (int64_t i = 0; i < n; ++i) {
    scalar_t u = g[i];
    if (adapted) u = (u + wd * w[i]) * trust;
    const scalar_t vn = v[i] * m + u;
    v[i] = vn;
    w[i] = w[i] - lr * (nesterov ? u + m * vn : vn);
  }
}

// The loops above, compiled once per target: on x86-64 with GCC an AVX2 clone (8 floats per
// instruction instead of SSE2's 4; both passes are partly compute-bound at SSE2 width) is picked at
// load time where the CPU has it. AVX2 without FMA: no contraction, so every clone computes the
// same bits as the baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define LARS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LARS_CLONES
#endif

template <typename scalar_t>
inline __attribute__((always_inline)) void update_any(scalar_t* w, const scalar_t* g, scalar_t* v, int64_t n, scalar_t lr, scalar_t m, scalar_t wd,
                scalar_t trust, bool adapted, bool nesterov) {
  if (adapted) {
    if (nesterov) update<scalar_t, true, true>(w, g, v, n, lr, m, wd, trust);
    else update<scalar_t, true, false>(w, g, v, n, lr, m, wd, trust);
  } else {
    if (nesterov) update<scalar_t, false, true>(w, g, v, n, lr, m, wd, trust);
    else update<scalar_t, false, false>(w, g, v, n, lr, m, wd, trust);
  }
}

LARS_CLONES void squares_cl(const float* w, const float* g, int64_t n, float wd, double* out) {
  squares<float>(w, g, n, wd, out);
}
LARS_CLONES void squares_cl(const double* w, const double* g, int64_t n, double wd, double* out) {
  squares<double>(w, g, n, wd, out);
}
LARS_CLONES void update_cl(float* w, const float* g, float* v, int64_t n, float lr, float m, float wd, float trust,
                           bool adapted, bool nesterov) {
  update_any<float>(w, g, v, n, lr, m, wd, trust, adapted, nesterov);
}
LARS_CLONES void update_cl(double* w, const double* g, double* v, int64_t n, double lr, double m, double wd,
                           double trust, bool adapted, bool nesterov) {
  update_any<double>(w, g, v, n, lr, m, wd, trust, adapted, nesterov);
}

struct Hyper {
  double lr, momentum, weight_decay, trust_coefficient, eps;
  bool clip, nesterov;
};

double trust_ratio(double sw, double sg, const Hyper& h) {
  const double w_norm = std::sqrt(sw), g_norm = std::sqrt(sg);
  double t = 1.0;
  if (w_norm > 0 && g_norm > 0) t = h.trust_coefficient * w_norm / (g_norm + h.eps);
  if (h.clip) t = std::min(t / h.lr, 1.0);
  return t;
}

template <typename scalar_t>
struct Step {
  std::vector<scalar_t*> w, v;
  std::vector<const scalar_t*> g;
  std::vector<int64_t> numel;
  int64_t n_adapted = 0;
  Hyper h{};
  scalar_t lr = 0, m = 0, wd = 0;

  // Sums of squares of tensor i's chunk starting at element b (adapted tensors only).
  void chunk_squares(int64_t i, int64_t b, double* out) const {
    squares_cl(w[i] + b, g[i] + b, std::min(kChunk, numel[i] - b), wd, out);
  }

  void update_range(int64_t i, int64_t begin, int64_t end, scalar_t trust) const {
    update_cl(w[i] + begin, g[i] + begin, v[i] + begin, end - begin, lr, m, wd, trust, i < n_adapted, h.nesterov);
  }

  // Tensor i by the calling thread: its norms, then at once its update.
  void whole(int64_t i) const {
    scalar_t trust = 1;
    if (i < n_adapted) {
      double sw = 0, sg = 0, part[2];
      for (int64_t b = 0; b < numel[i]; b += kChunk) {
        chunk_squares(i, b, part);
        sw += part[0];
        sg += part[1];
      }
      trust = static_cast<scalar_t>(trust_ratio(sw, sg, h));
    }
    update_range(i, 0, numel[i], trust);
  }
};

template <typename scalar_t>
void lars_kernel(at::TensorList params, at::TensorList grads, at::TensorList bufs, int64_t n_adapted,
                 const Hyper& h) {
  const int64_t n = static_cast<int64_t>(params.size());
  Step<scalar_t> s;
  s.w.resize(n);
  s.g.resize(n);
  s.v.resize(n);
  s.numel.resize(n);
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    s.w[i] = params[i].data_ptr<scalar_t>();
    s.g[i] = grads[i].const_data_ptr<scalar_t>();
    s.v[i] = bufs[i].data_ptr<scalar_t>();
    s.numel[i] = params[i].numel();
    total += s.numel[i];
  }
  s.n_adapted = n_adapted;
  s.h = h;
  s.lr = static_cast<scalar_t>(h.lr);
  s.m = static_cast<scalar_t>(h.momentum);
  s.wd = static_cast<scalar_t>(h.weight_decay);

  int threads = 1;
#ifdef _OPENMP
  if (total >= kSerial && !at::in_parallel_region()) {
    threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), n));
  }
#endif
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) s.whole(i);
    return;
  }

  // Whole-tensor tasks, largest first; the split tensors' chunks (tensor, first element), with the
  // index of each split tensor's first chunk and one past its last.
  const int64_t split_above = std::max(kSplitMin, total / (2 * threads));
  std::vector<int64_t> tasks, split, first_chunk;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  for (int64_t i = 0; i < n; ++i) {
    if (s.numel[i] <= split_above) {
      tasks.push_back(i);
      continue;
    }
    split.push_back(i);
    first_chunk.push_back(static_cast<int64_t>(chunks.size()));
    for (int64_t b = 0; b < s.numel[i]; b += kChunk) chunks.emplace_back(i, b);
  }
  first_chunk.push_back(static_cast<int64_t>(chunks.size()));
  std::stable_sort(tasks.begin(), tasks.end(), [&](int64_t a, int64_t b) { return s.numel[a] > s.numel[b]; });
  const int64_t n_tasks = static_cast<int64_t>(tasks.size()), n_split = static_cast<int64_t>(split.size());
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  std::vector<double> partial(2 * n_chunks);
  std::vector<scalar_t> split_trust(n_split, scalar_t(1));
  std::vector<int64_t> chunk_owner(n_chunks);  // index into split of each chunk's tensor
  for (int64_t k = 0; k < n_split; ++k) {
    std::fill(chunk_owner.begin() + first_chunk[k], chunk_owner.begin() + first_chunk[k + 1], k);
  }

#pragma omp parallel num_threads(threads)
  {
    if (n_chunks > 0) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < n_chunks; ++c) {
        if (chunks[c].first < n_adapted) s.chunk_squares(chunks[c].first, chunks[c].second, &partial[2 * c]);
      }
#pragma omp for schedule(static)
      for (int64_t k = 0; k < n_split; ++k) {
        if (split[k] >= n_adapted) continue;
        double sw = 0, sg = 0;
        for (int64_t c = first_chunk[k]; c < first_chunk[k + 1]; ++c) {
          sw += partial[2 * c];
          sg += partial[2 * c + 1];
        }
        split_trust[k] = static_cast<scalar_t>(trust_ratio(sw, sg, h));
      }
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t i = chunks[c].first, b = chunks[c].second;
        s.update_range(i, b, std::min(b + kChunk, s.numel[i]), split_trust[chunk_owner[c]]);
      }
    }
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < n_tasks; ++t) s.whole(tasks[t]);
  }
}

bool fits(const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef sizes) {
  return t.layout() == at::kStrided && t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() &&
         t.sizes() == sizes;
}

bool lars_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs, int64_t n_adapted,
                   double lr, double momentum, double weight_decay, double trust_coefficient, double eps,
                   bool clip, bool nesterov) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && bufs.size() == n,
              "lars_step_: params, grads and momentum_bufs must have the same length");
  TORCH_CHECK(n_adapted >= 0 && n_adapted <= static_cast<int64_t>(n), "lars_step_: n_adapted out of range");
  if (n == 0) return true;
  const auto dtype = params[0].scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  for (size_t i = 0; i < n; ++i) {
    const auto sizes = params[i].sizes();
    if (!fits(params[i], dtype, sizes) || !fits(grads[i], dtype, sizes) || !fits(bufs[i], dtype, sizes)) {
      return false;
    }
  }
  const Hyper h{lr, momentum, weight_decay, trust_coefficient, eps, clip, nesterov};
  if (dtype == at::kFloat) {
    lars_kernel<float>(params, grads, bufs, n_adapted, h);
  } else {
    lars_kernel<double>(params, grads, bufs, n_adapted, h);
  }
  // Written through raw pointers: bump the version counters as an in-place ATen op would.
  for (size_t i = 0; i < n; ++i) {
    torch::autograd::impl::bump_version(params[i]);
    torch::autograd::impl::bump_version(bufs[i]);
  }
  return true;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skelcl, m) {
  m.def("lars_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_bufs, int n_adapted, "
        "float lr, float momentum, float weight_decay, float trust_coefficient, float eps, bool clip, "
        "bool nesterov) -> bool");
}

// For every backend (CompositeExplicitAutograd), not only CPU: a sparse gradient or a tensor moved to
// another device then reaches the checks above, which return false, instead of a dispatch error.
TORCH_LIBRARY_IMPL(skelcl, CompositeExplicitAutograd, m) {
  m.impl("lars_step_", &lars_step_cpu);
}
