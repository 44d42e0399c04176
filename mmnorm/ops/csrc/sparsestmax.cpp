// SparsestMax (Shao et al., 2019) as one op with a C++ autograd node:
//
//   sparsestmax(Tensor z (..., K), Tensor radius (), Tensor? available (K,))
//   (radius and available on z's device)
//       -> Tensor (..., K)
//
// The same rounds as the Python reference, mmnorm/ops/sparsestmax.py (whose
// docstrings give the math): w = sparsemax(z), then K - 1 rounds that keep
// w, push it out to the circle of the remaining radius around the centre of
// its face, or project the pushed point back onto the simplex; every choice
// is a torch.where on tensors, so the op reads nothing back to the host and
// runs on any device (its kernels are ATen ops). A learning SSN layer used
// to spend about 190 dispatched ops forward and 150 backward from Python
// here, each with Python autograd bookkeeping; this op makes it one call per
// direction. The backward is written out (vector-Jacobian products of
// sparsemax and of the push, chained back through the rounds' selections)
// and matches autograd on the Python reference (tests/test_sparsestmax.py).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "once_differentiable.h"

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Below this distance from the centre of its face a point counts as the
// centre itself (as _TIE_DISTANCE in the Python reference).
constexpr double kTieDistance = 1e-6;

// Euclidean projection onto the simplex along the last dim; unavailable
// entries are -inf, sorted last and never in the support.
Tensor sparsemax(const Tensor& z, const Tensor& available) {
  const Tensor masked = z.masked_fill(available.logical_not(), -INFINITY);
  const Tensor sorted = std::get<0>(masked.sort(-1, /*descending=*/true));
  const Tensor cumsum = sorted.cumsum(-1);
  const Tensor ks = at::arange(1, z.size(-1) + 1, z.options());
  // the support is a prefix of the sorted entries; never empty
  const Tensor size =
      (ks * sorted + 1).gt(cumsum).sum(-1, /*keepdim=*/true).clamp_min(1);
  const Tensor tau =
      (cumsum.gather(-1, size - 1) - 1) / size.to(z.scalar_type());
  return (masked - tau).clamp_min(0);
}

// Vector-Jacobian product of w = sparsemax(.) given its output: on the
// support S the Jacobian is I - 1 1^T / |S|, elsewhere 0.
Tensor sparsemax_vjp(const Tensor& w, const Tensor& grad) {
  const Tensor support = w.gt(0).to(grad.scalar_type());
  const Tensor mean = (grad * support).sum(-1, true) /
                      support.sum(-1, true).clamp_min(1);
  return support * (grad - mean);
}

// One round's tensors, kept for the backward.
struct Round {
  Tensor w;        // the round's input point (a sparsemax output)
  Tensor centre;   // centre of w's face (no gradient)
  Tensor scale;    // r / |w - centre| (1 where the distance is 0)
  Tensor unit;     // (w - centre) / |w - centre| (0 where it is 0)
  Tensor tie;      // w is at the centre: the push direction is a constant
  Tensor stays;    // the round returns w
  Tensor done_in;  // an earlier round returned
  Tensor done_out;
  Tensor projected;  // sparsemax of the pushed point
};

struct Forward {
  Tensor out;
  Tensor first;  // sparsemax(z)
  std::vector<Round> rounds;
};

Forward forward_rounds(const Tensor& z, const Tensor& radius_in,
                       const Tensor& available, bool keep) {
  const auto type = z.scalar_type();
  // (a `to` that changes nothing would alias an input, which ops below
  // autograd must not do)
  const Tensor radius =
      radius_in.scalar_type() == type ? radius_in : radius_in.to(type);
  const Tensor avail = available.expand_as(z);
  Forward f;
  f.first = sparsemax(z, avail);
  Tensor w = f.first;
  Tensor remaining_sq =
      radius.square().expand(z.sizes().slice(0, z.dim() - 1)).unsqueeze(-1);
  Tensor out = w;
  Tensor done = at::zeros_like(remaining_sq, z.options().dtype(at::kBool));
  Tensor centre_prev;
  // after K - 1 rounds that did not return, the support is a vertex
  for (int64_t round = 0; round + 1 < z.size(-1); ++round) {
    const Tensor support = w.gt(0);
    const Tensor indicator = support.to(type);
    const Tensor size = indicator.sum(-1, true);
    const Tensor centre = indicator / size.clamp_min(1);
    if (centre_prev.defined()) {
      remaining_sq =
          remaining_sq - (centre - centre_prev).square().sum(-1, true);
    }
    const Tensor r = remaining_sq.clamp_min(0).sqrt();
    // from the centre itself: toward the first vertex of the face
    const Tensor first_vertex = indicator * indicator.cumsum(-1).eq(1);
    const Tensor tie_offset = first_vertex - centre;
    const Tensor tie_dist = at::linalg_vector_norm(tie_offset, 2, {-1}, true);
    const Tensor offset = w - centre;
    const Tensor dist = at::linalg_vector_norm(offset, 2, {-1}, true);
    const Tensor stays = size.le(1) | remaining_sq.le(0) | dist.ge(r);
    const Tensor tie = dist.lt(kTieDistance);
    const Tensor direction = at::where(tie, tie_offset, offset);
    const Tensor length = at::where(tie, tie_dist, dist);
    Tensor pushed =
        centre + direction * (r / at::where(length.gt(0), length,
                                            at::ones_like(length)));
    // back onto the plane sum(w) = 1 against rounding drift
    pushed = pushed + (1 - pushed.sum(-1, true)) * centre;
    const Tensor inside = pushed.ge(0).all(-1, true);
    out = at::where(done, out, at::where(stays, w, pushed));
    const Tensor done_out = done | stays | inside;
    const Tensor projected = sparsemax(pushed, avail);
    if (keep) {  // what the backward needs (the forward alone skips it)
      const Tensor safe = at::where(dist.gt(0), dist, at::ones_like(dist));
      f.rounds.push_back(Round{w, centre, r / safe, offset / safe, tie,
                               stays, done, done_out, projected});
    }
    w = at::where(done_out, w, projected);
    done = done_out;
    centre_prev = centre;
  }
  f.out = at::where(done, out, w);
  if (keep) {
    // the final selection reads the last done flag
    f.rounds.push_back(Round{Tensor(), Tensor(), Tensor(), Tensor(),
                             Tensor(), Tensor(), done, done, Tensor()});
  }
  return f;
}

// Vector-Jacobian product of the push p(w) = c + (w - c) r / |w - c|,
// p' = p + (1 - sum p) c: through the correction, then the scaling
// (r / |d|) (I - u u^T) with u the unit offset; 0 where w is at the centre.
Tensor push_vjp(const Round& round, const Tensor& grad) {
  const Tensor g = grad - (grad * round.centre).sum(-1, true);
  const Tensor radial = (g * round.unit).sum(-1, true) * round.unit;
  const Tensor through = round.scale * (g - radial);
  return at::where(round.tie, at::zeros_like(through), through);
}

Tensor backward_rounds(const std::vector<Round>& rounds, const Tensor& first,
                       const Tensor& grad) {
  const Tensor zero = at::zeros_like(grad);
  const Tensor& done_last = rounds.back().done_out;
  Tensor grad_out = at::where(done_last, grad, zero);
  Tensor grad_w = at::where(done_last, zero, grad);
  for (int64_t i = static_cast<int64_t>(rounds.size()) - 2; i >= 0; --i) {
    const Round& round = rounds[i];
    // w' = where(done_out, w, projected)
    Tensor grad_round_w = at::where(round.done_out, grad_w, zero);
    Tensor grad_pushed = sparsemax_vjp(
        round.projected, at::where(round.done_out, zero, grad_w));
    // out' = where(done_in, out, where(stays, w, pushed))
    const Tensor fresh = at::where(round.done_in, zero, grad_out);
    grad_out = at::where(round.done_in, grad_out, zero);
    grad_round_w = grad_round_w + at::where(round.stays, fresh, zero);
    grad_pushed = grad_pushed + at::where(round.stays, zero, fresh);
    grad_w = grad_round_w + push_vjp(round, grad_pushed);
  }
  // out and w both start as sparsemax(z)
  return sparsemax_vjp(first, grad_w + grad_out);
}

Tensor available_or_all(const Tensor& z, const std::optional<Tensor>& mask) {
  if (mask.has_value()) {
    return mask->scalar_type() == at::kBool ? *mask : mask->to(at::kBool);
  }
  return at::ones({z.size(-1)}, z.options().dtype(at::kBool));
}

void check_input(const Tensor& z, const Tensor& radius) {
  TORCH_CHECK(z.dim() >= 1 && z.size(-1) >= 1 && z.is_floating_point(),
              "mmnorm sparsestmax: z must be a floating point tensor "
              "(..., K) with K >= 1, got ", z.sizes(), " ", z.scalar_type());
  TORCH_CHECK(radius.dim() == 0,
              "mmnorm sparsestmax: radius must be a 0-dim tensor, got shape ",
              radius.sizes());
  TORCH_CHECK(radius.device() == z.device(),
              "mmnorm sparsestmax: radius must be on z's device (",
              z.device(), "), got ", radius.device());
}

class SparsestMaxFunction
    : public torch::autograd::Function<SparsestMaxFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& z,
                        const Tensor& radius,
                        const std::optional<Tensor>& available) {
    at::AutoDispatchBelowADInplaceOrView guard;
    check_input(z, radius);
    Forward f = forward_rounds(z, radius, available_or_all(z, available),
                               /*keep=*/true);
    std::vector<Tensor> saved{f.first};
    for (const Round& round : f.rounds) {
      for (const Tensor& t :
           {round.w, round.centre, round.scale, round.unit, round.tie,
            round.stays, round.done_in, round.done_out, round.projected}) {
        saved.push_back(t);
      }
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["rounds"] = static_cast<int64_t>(f.rounds.size());
    return f.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return mmnorm::once_differentiable(
        "mmnorm sparsestmax: second derivatives are not implemented", [&] {
          return variable_list{first_order_backward(ctx, grads), Tensor(),
                               Tensor()};
        });
  }

 private:
  static Tensor first_order_backward(AutogradContext* ctx,
                                     const variable_list& grads) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t count = ctx->saved_data["rounds"].toInt();
    std::vector<Round> rounds;
    for (int64_t i = 0; i < count; ++i) {
      const Tensor* t = &saved[1 + 9 * i];
      rounds.push_back(
          Round{t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]});
    }
    const Tensor grad = grads[0].defined() ? grads[0]
                                           : at::zeros_like(saved[0]);
    return backward_rounds(rounds, saved[0], grad);
  }
};

Tensor sparsestmax_autograd(const Tensor& z, const Tensor& radius,
                            const std::optional<Tensor>& available) {
  return SparsestMaxFunction::apply(z, radius, available);
}

// Below autograd (inference, or a trace after the node): forward alone.
Tensor sparsestmax_inference(const Tensor& z, const Tensor& radius,
                             const std::optional<Tensor>& available) {
  check_input(z, radius);
  return forward_rounds(z, radius, available_or_all(z, available),
                        /*keep=*/false)
      .out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmnorm, m) {
  m.def("sparsestmax(Tensor z, Tensor radius, Tensor? available) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmnorm, Autograd, m) {
  m.impl("sparsestmax", sparsestmax_autograd);
}

TORCH_LIBRARY_IMPL(mmnorm, CompositeExplicitAutograd, m) {
  m.impl("sparsestmax", sparsestmax_inference);
}
