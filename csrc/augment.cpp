// CPU kernel of the paper's view/distance augmentation (skelcl.reference.view_transform), K views
// of a batch in one pass over x: each (sequence, frame) plane of x is read once and all K views of
// it are written while it sits in cache.
//
//   skelcl::view_augment(x, angles, shift, center_joint) -> out
//     x      (N, 3, T, V, M) float64/float32/float16/bfloat16 (made contiguous here)
//     angles (K, N, Ta, 3) radians, Ta in {1, T}; shift (K, N, Ts, 3), Ts in {1, T}; both float32,
//            or float64 when x is float64 (the arithmetic type: float for every dtype but double)
//     out    (K, N, 3, T, V, M), dtype of x
//
// out = R (v - c - d) for every present (frame, person) slot and exactly 0 for absent ones, where
// c is person 0's centre joint at the first frame person 0 is present (0 if never present) and
// R = Rx(alpha) Ry(beta) Rz(gamma) (passive rotations).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

template <typename acc_t>
void rotation(const acc_t* ang, acc_t* r) {
  const acc_t ca = std::cos(ang[0]), sa = std::sin(ang[0]);
  const acc_t cb = std::cos(ang[1]), sb = std::sin(ang[1]);
  const acc_t cg = std::cos(ang[2]), sg = std::sin(ang[2]);
  // Rx(a) Ry(b) Rz(g), multiplied out.
  r[0] = cb * cg;                 r[1] = cb * sg;                 r[2] = -sb;
  r[3] = sa * sb * cg - ca * sg;  r[4] = sa * sb * sg + ca * cg;  r[5] = sa * cb;
  r[6] = ca * sb * cg + sa * sg;  r[7] = ca * sb * sg - sa * cg;  r[8] = ca * cb;
}

template <typename scalar_t>
bool slot_present(const scalar_t* plane, int64_t m, int64_t V, int64_t M, int64_t chan_stride) {
  for (int64_t c = 0; c < 3; ++c) {
    const scalar_t* p = plane + c * chan_stride + m;
    for (int64_t v = 0; v < V; ++v) {
      if (static_cast<double>(p[v * M]) != 0.0) return true;  // double: tiny float64 values count
    }
  }
  return false;
}

template <typename scalar_t>
void augment_kernel(const at::Tensor& x, const at::Tensor& angles, const at::Tensor& shift,
                    int64_t cj, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), T = x.size(2), V = x.size(3), M = x.size(4);
  const int64_t K = angles.size(0), Ta = angles.size(2), Ts = shift.size(2);
  const int64_t VM = V * M, TVM = T * VM;  // TVM: channel stride of x and of each view
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* ap = angles.const_data_ptr<acc_t>();
  const acc_t* sp = shift.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();

  // One parallel region over sequences: a sequence's centre, rotations and frames are handled by
  // one thread, so nothing is shared and there is a single fork/join per call.
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<acc_t> rot(K * Ta * 9);
    std::vector<char> present(M);
    for (int64_t n = n0; n < n1; ++n) {
      const scalar_t* xn = xp + n * 3 * TVM;
      acc_t centre[3] = {0, 0, 0};
      for (int64_t t = 0; t < T; ++t) {  // first frame where person 0 is present
        if (slot_present(xn + t * VM, 0, V, M, TVM)) {
          for (int64_t c = 0; c < 3; ++c) centre[c] = static_cast<acc_t>(xn[c * TVM + t * VM + cj * M]);
          break;
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t ta = 0; ta < Ta; ++ta) {
          rotation(ap + ((k * N + n) * Ta + ta) * 3, rot.data() + (k * Ta + ta) * 9);
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* x0 = xn + t * VM;
        const scalar_t* x1 = x0 + TVM;
        const scalar_t* x2 = x1 + TVM;
        bool any_absent = false;
        for (int64_t m = 0; m < M; ++m) {
          present[m] = slot_present(x0, m, V, M, TVM);
          any_absent |= !present[m];
        }
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* r = rot.data() + (k * Ta + (Ta == 1 ? 0 : t)) * 9;
          const acc_t* d = sp + ((k * N + n) * Ts + (Ts == 1 ? 0 : t)) * 3;
          const acc_t o0 = centre[0] + d[0], o1 = centre[1] + d[1], o2 = centre[2] + d[2];
          const acc_t r00 = r[0], r01 = r[1], r02 = r[2], r10 = r[3], r11 = r[4], r12 = r[5];
          const acc_t r20 = r[6], r21 = r[7], r22 = r[8];
          scalar_t* y0 = op + (k * N + n) * 3 * TVM + t * VM;
          scalar_t* y1 = y0 + TVM;
          scalar_t* y2 = y1 + TVM;
          // The hot loop: contiguous over (joint, person), no branches, so it vectorises.
#pragma omp simd
          for (int64_t j = 0; j < VM; ++j) {
            const acc_t a = static_cast<acc_t>(x0[j]) - o0;
            const acc_t b = static_cast<acc_t>(x1[j]) - o1;
            const acc_t c = static_cast<acc_t>(x2[j]) - o2;
            y0[j] = static_cast<scalar_t>(r00 * a + r01 * b + r02 * c);
            y1[j] = static_cast<scalar_t>(r10 * a + r11 * b + r12 * c);
            y2[j] = static_cast<scalar_t>(r20 * a + r21 * b + r22 * c);
          }
          if (any_absent) {  // padding slots stay exactly zero
            for (int64_t m = 0; m < M; ++m) {
              if (present[m]) continue;
              for (int64_t v = 0; v < V; ++v) {
                y0[v * M + m] = scalar_t(0);
                y1[v * M + m] = scalar_t(0);
                y2[v * M + m] = scalar_t(0);
              }
            }
          }
        }
      }
    }
  });
}

at::Tensor view_augment_cpu(const at::Tensor& x_in, const at::Tensor& angles_in, const at::Tensor& shift_in,
                            int64_t center_joint) {
  TORCH_CHECK(x_in.dim() == 5 && x_in.size(1) == 3, "x must be (N, 3, T, V, M)");
  TORCH_CHECK(angles_in.dim() == 4 && angles_in.size(3) == 3, "angles must be (K, N, Ta, 3)");
  TORCH_CHECK(shift_in.dim() == 4 && shift_in.size(3) == 3, "shift must be (K, N, Ts, 3)");
  const int64_t N = x_in.size(0), T = x_in.size(2), V = x_in.size(3), M = x_in.size(4);
  const int64_t K = angles_in.size(0);
  TORCH_CHECK(angles_in.size(1) == N && (angles_in.size(2) == 1 || angles_in.size(2) == T),
              "angles must be (K, N, 1 or T, 3)");
  TORCH_CHECK(shift_in.size(0) == K && shift_in.size(1) == N && (shift_in.size(2) == 1 || shift_in.size(2) == T),
              "shift must be (K, N, 1 or T, 3)");
  TORCH_CHECK(0 <= center_joint && center_joint < V, "center_joint out of range");
  const auto acc = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(angles_in.scalar_type() == acc && shift_in.scalar_type() == acc,
              "angles and shift must be float32 (float64 for float64 x)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor angles = angles_in.contiguous();
  const at::Tensor shift = shift_in.contiguous();
  at::Tensor out = at::empty({K, N, 3, T, V, M}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "view_augment_cpu", [&] {
    augment_kernel<scalar_t>(x, angles, shift, center_joint, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skelcl, m) {
  m.def("view_augment(Tensor x, Tensor angles, Tensor shift, int center_joint) -> Tensor");
}

TORCH_LIBRARY_IMPL(skelcl, CPU, m) {
  m.impl("view_augment", &view_augment_cpu);
}
