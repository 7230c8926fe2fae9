// CPU kernels of the spatial graph convolution's joint mixing with a sparse mixing matrix.
//
// ST-GCN mixes joints with K adjacency partitions: row r = k*W + w of the (K*W, V) mixing matrix
// holds A_k[:, w]. Skeleton graphs are sparse (NTU-25: 73 non-zeros of 1,875), so the mixing is a
// few scaled row copies per output row; done as a dense batched product it is mostly multiplying
// by zeros, with a GEMM inner dimension of V = 25 that runs far below peak. The matrix is passed
// in CSR form (rowptr, col, val); its transpose (for the input gradient) is the same op with the
// transposed CSR.
//
//   skelcl::graph_mix_(out, x, rowptr, col, val)
//     x (B, V, L), out (B, R, L), both contiguous, float32 or float64; rowptr (R+1,) int64,
//     col (nnz,) int64 in [0, V), val (nnz,) of x's dtype. Either of out and x may instead be
//     partition-major, (P, B, R / P, L) (see Rows below).
//     out[b, r, :] = sum_{j in row r} val[j] * x[b, col[j], :]   (0 for an empty row)
//   skelcl::graph_mix_val_grad(g, x, rowptr, col) -> (nnz,)
//     g (B, R, L), x (B, V, L), either partition-major too; d/d val[j] of sum(g * out):
//     sum_{b, l} g[b, r_j, l] * x[b, col[j], l]
//
// One parallel region over sequences b: a sequence's slab of x (V rows) stays in cache while all R
// output rows are written from it. The value gradient accumulates per sequence in double and sums
// the sequences in a fixed order, so results do not depend on the number of threads.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

namespace {

void check_csr(const at::Tensor& rowptr, const at::Tensor& col, int64_t rows, int64_t cols) {
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.size(0) == rows + 1 && rowptr.scalar_type() == at::kLong,
              "graph_mix: rowptr must be an int64 vector of length rows + 1 = ", rows + 1);
  TORCH_CHECK(col.dim() == 1 && col.scalar_type() == at::kLong, "graph_mix: col must be an int64 vector");
  TORCH_CHECK(rowptr.is_contiguous() && col.is_contiguous(), "graph_mix: rowptr and col must be contiguous");
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t* cp = col.const_data_ptr<int64_t>();
  TORCH_CHECK(rp[0] == 0 && rp[rows] == col.size(0), "graph_mix: rowptr must run from 0 to nnz");
  for (int64_t r = 0; r < rows; ++r) TORCH_CHECK(rp[r] <= rp[r + 1], "graph_mix: rowptr must not decrease");
  for (int64_t j = 0; j < col.size(0); ++j) {
    TORCH_CHECK(cp[j] >= 0 && cp[j] < cols, "graph_mix: column index ", cp[j], " outside [0, ", cols, ")");
  }
}

// A contiguous tensor seen as B sequences of `rows` rows of L elements: (B, rows, L), or
// partition-major (P, B, rows / P, L), where row r of sequence b is row r % (rows / P) of block
// (r / (rows / P), b): each partition's rows of all sequences are then one contiguous block, as a
// per-partition GEMM reads them.
struct Rows {
  int64_t parts, batch, rows, length;

  static Rows of(const at::Tensor& t, const char* name) {
    TORCH_CHECK((t.dim() == 3 || t.dim() == 4) && t.is_contiguous(), "graph_mix: ", name,
                " must be a contiguous (B, rows, L) or (P, B, rows / P, L) tensor");
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
                "graph_mix: ", name, " must be float32 or float64, got ", t.scalar_type());
    if (t.dim() == 3) return {1, t.size(0), t.size(1), t.size(2)};
    return {t.size(0), t.size(1), t.size(0) * t.size(2), t.size(3)};
  }

  int64_t offset(int64_t b, int64_t r) const {
    const int64_t per = rows / parts;
    return (((r / per) * batch + b) * per + r % per) * length;
  }
};

template <typename scalar_t>
void mix_kernel(const Rows& ro, scalar_t* op, const Rows& rx, const scalar_t* xp, const int64_t* rp,
                const int64_t* cp, const scalar_t* vp) {
  const int64_t L = rx.length;
  at::parallel_for(0, ro.batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t r = 0; r < ro.rows; ++r) {
        scalar_t* o = op + ro.offset(b, r);
        const int64_t j0 = rp[r], j1 = rp[r + 1];
        if (j0 == j1) {
          for (int64_t l = 0; l < L; ++l) o[l] = scalar_t(0);
          continue;
        }
        const scalar_t v0 = vp[j0];
        const scalar_t* x0 = xp + rx.offset(b, cp[j0]);
        for (int64_t l = 0; l < L; ++l) o[l] = v0 * x0[l];
        for (int64_t j = j0 + 1; j < j1; ++j) {
          const scalar_t v = vp[j];
          const scalar_t* xr = xp + rx.offset(b, cp[j]);
          for (int64_t l = 0; l < L; ++l) o[l] += v * xr[l];
        }
      }
    }
  });
}

// sum_l a[l] * b[l] with 16 independent float lanes (vectorised without reassociation flags).
template <typename scalar_t>
double dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  constexpr int kLanes = 16;
  scalar_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += a[i + k] * b[i + k];
  }
  double s = 0.0;
  for (int k = 0; k < kLanes; ++k) s += static_cast<double>(acc[k]);
  for (; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

template <typename scalar_t>
void val_grad_kernel(scalar_t* out, const Rows& rg, const scalar_t* gp, const Rows& rx, const scalar_t* xp,
                     const int64_t* rp, const int64_t* cp, int64_t nnz) {
  const int64_t B = rx.batch, L = rx.length;
  std::vector<double> partial(static_cast<size_t>(B * nnz), 0.0);  // (B, nnz): one row per sequence
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* pb = partial.data() + b * nnz;
      for (int64_t r = 0; r < rg.rows; ++r) {
        const scalar_t* gr = gp + rg.offset(b, r);
        for (int64_t j = rp[r]; j < rp[r + 1]; ++j) pb[j] = dot(gr, xp + rx.offset(b, cp[j]), L);
      }
    }
  });
  for (int64_t j = 0; j < nnz; ++j) {
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) s += partial[b * nnz + j];
    out[j] = static_cast<scalar_t>(s);
  }
}

void check_pair(const Rows& a, const Rows& b, const char* what) {
  TORCH_CHECK(a.batch == b.batch && a.length == b.length, "graph_mix: ", what,
              " must hold the same number of sequences B and row length L");
}

void graph_mix_(at::Tensor out, const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                const at::Tensor& val) {
  const Rows ro = Rows::of(out, "out"), rx = Rows::of(x, "x");
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && val.scalar_type() == x.scalar_type(),
              "graph_mix: out, x and val must have the same dtype");
  check_pair(ro, rx, "out and x");
  check_csr(rowptr, col, ro.rows, rx.rows);
  TORCH_CHECK(val.dim() == 1 && val.is_contiguous() && val.size(0) == col.size(0),
              "graph_mix: val must be a contiguous vector with one value per column index");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "graph_mix_", [&] {
    mix_kernel<scalar_t>(ro, out.mutable_data_ptr<scalar_t>(), rx, x.const_data_ptr<scalar_t>(),
                         rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(),
                         val.const_data_ptr<scalar_t>());
  });
}

at::Tensor graph_mix_val_grad(const at::Tensor& g, const at::Tensor& x, const at::Tensor& rowptr,
                              const at::Tensor& col) {
  const Rows rg = Rows::of(g, "g"), rx = Rows::of(x, "x");
  TORCH_CHECK(g.scalar_type() == x.scalar_type(), "graph_mix_val_grad: g and x must have the same dtype");
  check_pair(rg, rx, "g and x");
  check_csr(rowptr, col, rg.rows, rx.rows);
  at::Tensor grad_val = at::empty({col.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "graph_mix_val_grad", [&] {
    val_grad_kernel<scalar_t>(grad_val.mutable_data_ptr<scalar_t>(), rg, g.const_data_ptr<scalar_t>(), rx,
                              x.const_data_ptr<scalar_t>(), rowptr.const_data_ptr<int64_t>(),
                              col.const_data_ptr<int64_t>(), col.size(0));
  });
  return grad_val;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skelcl, m) {
  m.def("graph_mix_(Tensor(a!) out, Tensor x, Tensor rowptr, Tensor col, Tensor val) -> ()");
  m.def("graph_mix_val_grad(Tensor g, Tensor x, Tensor rowptr, Tensor col) -> Tensor");
}

TORCH_LIBRARY_IMPL(skelcl, CPU, m) {
  m.impl("graph_mix_", &graph_mix_);
  m.impl("graph_mix_val_grad", &graph_mix_val_grad);
}
