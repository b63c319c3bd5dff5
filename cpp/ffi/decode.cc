#include "ffi/decode.h"

#include <cmath>
#include <cstdint>
#include <string>

namespace qkrope::ffi_decode {
namespace {

constexpr int64_t kMaxHeadDim = 512;

ffi::Error invalid(const std::string& message) { return ffi::Error::InvalidArgument("qkrope: " + message); }

std::string dims_string(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

bool same_dims(ffi::AnyBuffer::Dimensions a, ffi::AnyBuffer::Dimensions b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

// True when the first `rank` dims of a equal all dims of b (b has exactly `rank` dims).
bool leading_dims_match(ffi::AnyBuffer::Dimensions a, size_t rank, ffi::AnyBuffer::Dimensions b) {
  if (a.size() < rank || b.size() != rank) return false;
  for (size_t i = 0; i < rank; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

int64_t product(ffi::AnyBuffer::Dimensions dims, size_t count) {
  int64_t n = 1;
  for (size_t i = 0; i < count; ++i) n *= dims[i];
  return n;
}

bool float_type(ffi::DataType type, ElemType* out) {
  switch (type) {
    case ffi::DataType::F32:
      *out = ElemType::kF32;
      return true;
    case ffi::DataType::BF16:
      *out = ElemType::kBF16;
      return true;
    case ffi::DataType::F16:
      *out = ElemType::kF16;
      return true;
    default:
      return false;
  }
}

template <typename T>
ffi::Error get_attr(const ffi::Dictionary& attrs, const char* name, T* value) {
  auto v = attrs.get<T>(name);
  if (!v.has_value()) return invalid(std::string("attribute '") + name + "' is missing or has the wrong type");
  *value = *v;
  return ffi::Error::Success();
}

// Attributes common to all four targets.
ffi::Error read_attrs(const ffi::Dictionary& attrs, Problem& p, Launch& launch) {
  int64_t style = 0, rotary_dim = 0, pairs_per_warp = 0, warps_per_block = 0, single_warps_per_block = 0;
  int64_t prefetch_pairs = 0, l2_policy = 0;
  float eps = 0.0f, weight_offset = 0.0f;
  bool pdl = false, persistent = false, shared_rows = false;
  for (ffi::Error e : {get_attr(attrs, "style", &style), get_attr(attrs, "rotary_dim", &rotary_dim),
                       get_attr(attrs, "eps", &eps), get_attr(attrs, "weight_offset", &weight_offset),
                       get_attr(attrs, "pairs_per_warp", &pairs_per_warp),
                       get_attr(attrs, "warps_per_block", &warps_per_block),
                       get_attr(attrs, "single_warps_per_block", &single_warps_per_block), get_attr(attrs, "pdl", &pdl),
                       get_attr(attrs, "prefetch_pairs", &prefetch_pairs),
                       get_attr(attrs, "persistent", &persistent), get_attr(attrs, "shared_rows", &shared_rows),
                       get_attr(attrs, "l2_policy", &l2_policy)}) {
    if (e.failure()) return e;
  }
  if (style != 0 && style != 1) return invalid("style must be 0 (neox) or 1 (gptj), got " + std::to_string(style));
  if (!(eps > 0.0f) || !std::isfinite(eps)) return invalid("eps must be a positive finite number");
  if (!std::isfinite(weight_offset)) return invalid("weight_offset must be finite");
  if (pairs_per_warp != 1 && pairs_per_warp != 2 && pairs_per_warp != 4 && pairs_per_warp != 8 &&
      pairs_per_warp != 16) {
    return invalid("pairs_per_warp must be 1, 2, 4, 8 or 16, got " + std::to_string(pairs_per_warp));
  }
  if (warps_per_block < 1 || warps_per_block > kMaxWarpsPerBlock) {
    return invalid("warps_per_block must be in [1, " + std::to_string(kMaxWarpsPerBlock) + "]");
  }
  if (single_warps_per_block < 1 || single_warps_per_block > kMaxSingleWarpsPerBlock) {
    return invalid("single_warps_per_block must be in [1, " + std::to_string(kMaxSingleWarpsPerBlock) + "]");
  }
  if (prefetch_pairs < 0 || prefetch_pairs > INT32_MAX) return invalid("prefetch_pairs must be in [0, 2^31)");
  if (l2_policy < 0 || l2_policy > 1) return invalid("l2_policy must be 0 or 1, got " + std::to_string(l2_policy));
  p.style = static_cast<Style>(style);
  p.rotary_dim = static_cast<int32_t>(rotary_dim);
  p.eps = eps;
  p.weight_offset = weight_offset;
  launch.pairs_per_warp = static_cast<int32_t>(pairs_per_warp);
  launch.warps_per_block = static_cast<int32_t>(warps_per_block);
  launch.single_warps_per_block = static_cast<int32_t>(single_warps_per_block);
  launch.pdl = pdl;
  launch.prefetch_pairs = static_cast<int32_t>(prefetch_pairs);
  launch.persistent = persistent;
  launch.shared_rows = shared_rows;
  launch.l2_policy = static_cast<int32_t>(l2_policy);
  if (rotary_dim < 2 || rotary_dim % 2 != 0) return invalid("rotary_dim must be even and >= 2");
  return ffi::Error::Success();
}

// Checks head_dim, rotary_dim, positions, weights and the table once the head layout is known.
ffi::Error check_shared(ffi::AnyBuffer positions, ffi::AnyBuffer::Dimensions lead_dims, size_t lead_rank,
                        ffi::AnyBuffer q_weight, ffi::AnyBuffer k_weight, ffi::AnyBuffer table, Problem& p) {
  if (p.head_dim < 2 || p.head_dim % 2 != 0 || p.head_dim > kMaxHeadDim) {
    return invalid("head_dim must be even and in [2, 512], got " + std::to_string(p.head_dim));
  }
  if (p.rotary_dim > p.head_dim) return invalid("rotary_dim must be <= head_dim");

  if (positions.element_type() == ffi::DataType::S32) {
    p.positions_64 = false;
  } else if (positions.element_type() == ffi::DataType::S64) {
    p.positions_64 = true;
  } else {
    return invalid("positions must be int32 or int64");
  }
  if (!leading_dims_match(lead_dims, lead_rank, positions.dimensions())) {
    return invalid("positions shape " + dims_string(positions.dimensions()) + " must equal the leading dims of " +
                   dims_string(lead_dims));
  }
  p.positions = positions.untyped_data();
  p.num_tokens = product(lead_dims, lead_rank);

  ffi::AnyBuffer weights[2] = {q_weight, k_weight};
  for (int i = 0; i < 2; ++i) {
    const auto dims = weights[i].dimensions();
    if (dims.size() != 1 || (dims[0] != 0 && dims[0] != p.head_dim)) {
      return invalid(std::string(i ? "k_weight" : "q_weight") + " must have shape [0] (absent) or [head_dim]");
    }
    if (!float_type(weights[i].element_type(), &p.weight_dtype[i])) {
      return invalid("weights must be float32, bfloat16 or float16");
    }
    p.weight[i] = dims[0] == 0 ? nullptr : weights[i].untyped_data();
  }

  const auto tdims = table.dimensions();
  p.table.data = table.untyped_data();
  if (tdims.size() == 2) {
    if (!float_type(table.element_type(), &p.table.dtype)) return invalid("cos_sin_cache must be a float type");
    if (tdims[1] != p.rotary_dim) return invalid("cos_sin_cache must have rotary_dim columns");
    if (tdims[0] < 1) return invalid("cos_sin_cache must have at least one row");
    p.table.is_cache = true;
    p.table.rows = tdims[0];
  } else if (tdims.size() == 1) {
    if (table.element_type() != ffi::DataType::F32) return invalid("inv_freq must be float32");
    if (tdims[0] != p.rotary_dim / 2) return invalid("inv_freq must have rotary_dim / 2 entries");
    p.table.dtype = ElemType::kF32;
    p.table.is_cache = false;
  } else {
    return invalid("the rope table must be a [P, rotary_dim] cache or a [rotary_dim / 2] inv_freq vector");
  }
  return ffi::Error::Success();
}

ffi::Error check_like(ffi::AnyBuffer a, ffi::AnyBuffer b, const char* what) {
  if (a.element_type() != b.element_type() || !same_dims(a.dimensions(), b.dimensions())) {
    return invalid(std::string(what) + " must match its input's shape and dtype");
  }
  return ffi::Error::Success();
}

ffi::Error check_dweight(ffi::AnyBuffer dw, const void* weight, int32_t head_dim, int64_t examples, float** out) {
  const auto dims = dw.dimensions();
  const int64_t expected = weight ? head_dim : 0;
  if (dw.element_type() != ffi::DataType::F32 || dims.size() != 2 || dims[0] != examples || dims[1] != expected) {
    return invalid("weight gradients must be float32 [examples, head_dim] ([examples, 0] when the weight is absent)");
  }
  *out = weight ? static_cast<float*>(dw.untyped_data()) : nullptr;
  return ffi::Error::Success();
}

// partials [examples, blocks_per_example, 2, head_dim]; the tokens must split evenly into examples.
ffi::Error check_partials(ffi::AnyBuffer partials, const Problem& p, BackwardOutputs& out) {
  const auto dims = partials.dimensions();
  if (partials.element_type() != ffi::DataType::F32 || dims.size() != 4 || dims[0] < 1 || dims[1] < 1 ||
      dims[2] != 2 || dims[3] != p.head_dim) {
    return invalid("partials must be float32 [examples, blocks, 2, head_dim]");
  }
  if (p.num_tokens % dims[0] != 0) return invalid("the token count must be a multiple of the example count");
  out.partials = static_cast<float*>(partials.untyped_data());
  out.num_examples = dims[0];
  out.blocks_per_example = dims[1];
  return ffi::Error::Success();
}

// Partials first: they give the example count the weight gradients are checked against.
ffi::Error check_backward_outputs(ffi::AnyBuffer dq_weight, ffi::AnyBuffer dk_weight, ffi::AnyBuffer partials,
                                  const Problem& p, BackwardOutputs& out) {
  if (auto e = check_partials(partials, p, out); e.failure()) return e;
  if (auto e = check_dweight(dq_weight, p.weight[0], p.head_dim, out.num_examples, &out.dweight[0]); e.failure()) {
    return e;
  }
  return check_dweight(dk_weight, p.weight[1], p.head_dim, out.num_examples, &out.dweight[1]);
}

// Separate q/k layout: fills dtype, head groups and the shared fields.
ffi::Error decode_separate(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer positions, ffi::AnyBuffer q_weight,
                           ffi::AnyBuffer k_weight, ffi::AnyBuffer table, const ffi::Dictionary& attrs, Problem& p,
                           Launch& launch) {
  if (auto e = read_attrs(attrs, p, launch); e.failure()) return e;
  if (!float_type(q.element_type(), &p.dtype)) return invalid("q must be float32, bfloat16 or float16");
  if (k.element_type() != q.element_type()) return invalid("k must have q's dtype");
  const auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() < 2 || kd.size() != qd.size()) return invalid("q and k must be [..., heads, head_dim] of equal rank");
  const size_t lead = qd.size() - 2;
  if (!leading_dims_match(qd, lead, kd.first(lead)) || qd[lead + 1] != kd[lead + 1]) {
    return invalid("q " + dims_string(qd) + " and k " + dims_string(kd) + " must share leading dims and head_dim");
  }
  p.head_dim = static_cast<int32_t>(qd[lead + 1]);
  p.group[0].num_heads = static_cast<int32_t>(qd[lead]);
  p.group[1].num_heads = static_cast<int32_t>(kd[lead]);
  for (int g = 0; g < 2; ++g) p.group[g].token_stride = static_cast<int64_t>(p.group[g].num_heads) * p.head_dim;
  p.group[0].in = q.untyped_data();
  p.group[1].in = k.untyped_data();
  return check_shared(positions, qd, lead, q_weight, k_weight, table, p);
}

// Packed layout [..., (Hq + 2 Hk) D]: q, k and v heads as three groups over one buffer.
ffi::Error decode_packed(ffi::AnyBuffer qkv, ffi::AnyBuffer positions, ffi::AnyBuffer q_weight,
                         ffi::AnyBuffer k_weight, ffi::AnyBuffer table, const ffi::Dictionary& attrs, Problem& p,
                         Launch& launch) {
  if (auto e = read_attrs(attrs, p, launch); e.failure()) return e;
  int64_t num_q = 0, num_kv = 0;
  if (auto e = get_attr(attrs, "num_q_heads", &num_q); e.failure()) return e;
  if (auto e = get_attr(attrs, "num_kv_heads", &num_kv); e.failure()) return e;
  if (!float_type(qkv.element_type(), &p.dtype)) return invalid("qkv must be float32, bfloat16 or float16");
  const auto dims = qkv.dimensions();
  if (dims.size() == 0) return invalid("qkv must have at least one dimension");
  if (num_q < 1 || num_kv < 1) return invalid("num_q_heads and num_kv_heads must be positive");
  const int64_t width = dims[dims.size() - 1], heads = num_q + 2 * num_kv;
  if (width % heads != 0) return invalid("qkv's last dim must be (num_q_heads + 2 num_kv_heads) * head_dim");
  p.head_dim = static_cast<int32_t>(width / heads);
  const int64_t offsets[3] = {0, num_q * p.head_dim, (num_q + num_kv) * p.head_dim};
  const int64_t counts[3] = {num_q, num_kv, num_kv};
  const size_t elem = static_cast<size_t>(elem_bytes(p.dtype));
  for (int g = 0; g < 3; ++g) {
    p.group[g].num_heads = static_cast<int32_t>(counts[g]);
    p.group[g].token_stride = width;
    p.group[g].in = static_cast<const char*>(qkv.untyped_data()) + offsets[g] * elem;
  }
  return check_shared(positions, dims, dims.size() - 1, q_weight, k_weight, table, p);
}

// Points group g's `member` at `base` shifted by that group's offset inside the packed row.
template <typename Ptr>
void place_packed(Problem& p, const ffi::AnyBuffer& qkv, void* base, Ptr HeadGroup::*member) {
  for (int g = 0; g < 3; ++g) {
    const auto offset = static_cast<const char*>(p.group[g].in) - static_cast<const char*>(qkv.untyped_data());
    p.group[g].*member = static_cast<char*>(base) + offset;
  }
}

}  // namespace

ffi::Error decode_forward(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer positions, ffi::AnyBuffer q_weight,
                          ffi::AnyBuffer k_weight, ffi::AnyBuffer table, ffi::Result<ffi::AnyBuffer> q_out,
                          ffi::Result<ffi::AnyBuffer> k_out, const ffi::Dictionary& attrs, Forward* out) {
  Problem& p = out->problem;
  if (auto e = decode_separate(q, k, positions, q_weight, k_weight, table, attrs, p, out->launch); e.failure()) {
    return e;
  }
  if (auto e = check_like(q, *q_out, "q_out"); e.failure()) return e;
  if (auto e = check_like(k, *k_out, "k_out"); e.failure()) return e;
  p.group[0].out = q_out->untyped_data();
  p.group[1].out = k_out->untyped_data();
  return ffi::Error::Success();
}

ffi::Error decode_forward_packed(ffi::AnyBuffer qkv, ffi::AnyBuffer positions, ffi::AnyBuffer q_weight,
                                 ffi::AnyBuffer k_weight, ffi::AnyBuffer table, ffi::Result<ffi::AnyBuffer> qkv_out,
                                 const ffi::Dictionary& attrs, Forward* out) {
  Problem& p = out->problem;
  if (auto e = decode_packed(qkv, positions, q_weight, k_weight, table, attrs, p, out->launch); e.failure()) return e;
  if (auto e = check_like(qkv, *qkv_out, "qkv_out"); e.failure()) return e;
  place_packed(p, qkv, qkv_out->untyped_data(), &HeadGroup::out);
  // In place (aliased), V is already where it belongs; otherwise the kernel copies it.
  if (qkv_out->untyped_data() == qkv.untyped_data()) p.group[2].num_heads = 0;
  return ffi::Error::Success();
}

ffi::Error decode_backward(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer dq_out, ffi::AnyBuffer dk_out,
                           ffi::AnyBuffer positions, ffi::AnyBuffer q_weight, ffi::AnyBuffer k_weight,
                           ffi::AnyBuffer table, ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                           ffi::Result<ffi::AnyBuffer> dq_weight, ffi::Result<ffi::AnyBuffer> dk_weight,
                           ffi::Result<ffi::AnyBuffer> partials, const ffi::Dictionary& attrs, Backward* out) {
  Problem& p = out->problem;
  if (auto e = decode_separate(q, k, positions, q_weight, k_weight, table, attrs, p, out->launch); e.failure()) {
    return e;
  }
  for (ffi::Error e : {check_like(q, dq_out, "the q cotangent"), check_like(k, dk_out, "the k cotangent"),
                       check_like(q, *dq, "dq"), check_like(k, *dk, "dk")}) {
    if (e.failure()) return e;
  }
  p.group[0].grad = dq_out.untyped_data();
  p.group[1].grad = dk_out.untyped_data();
  p.group[0].out = dq->untyped_data();
  p.group[1].out = dk->untyped_data();
  return check_backward_outputs(*dq_weight, *dk_weight, *partials, p, out->outputs);
}

ffi::Error decode_backward_packed(ffi::AnyBuffer qkv, ffi::AnyBuffer dqkv_out, ffi::AnyBuffer positions,
                                  ffi::AnyBuffer q_weight, ffi::AnyBuffer k_weight, ffi::AnyBuffer table,
                                  ffi::Result<ffi::AnyBuffer> dqkv, ffi::Result<ffi::AnyBuffer> dq_weight,
                                  ffi::Result<ffi::AnyBuffer> dk_weight, ffi::Result<ffi::AnyBuffer> partials,
                                  const ffi::Dictionary& attrs, Backward* out) {
  Problem& p = out->problem;
  if (auto e = decode_packed(qkv, positions, q_weight, k_weight, table, attrs, p, out->launch); e.failure()) return e;
  if (auto e = check_like(qkv, dqkv_out, "the qkv cotangent"); e.failure()) return e;
  if (auto e = check_like(qkv, *dqkv, "dqkv"); e.failure()) return e;
  if (dqkv->untyped_data() != dqkv_out.untyped_data()) {
    return invalid("the packed backward writes in place: dqkv must alias the cotangent");
  }
  place_packed(p, qkv, dqkv_out.untyped_data(), &HeadGroup::grad);
  place_packed(p, qkv, dqkv->untyped_data(), &HeadGroup::out);
  p.group[2].num_heads = 0;  // V's gradient is the cotangent itself, already in place
  return check_backward_outputs(*dq_weight, *dk_weight, *partials, p, out->outputs);
}

}  // namespace qkrope::ffi_decode
