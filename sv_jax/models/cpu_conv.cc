// oneDNN convolutions for XLA:CPU, as XLA FFI handlers: forward, gradient w.r.t. the input, gradient w.r.t. the
// weights. sv_jax/models/cpu_conv.py builds this file, registers the handlers and explains when they are used.
//
// Layouts are JAX's: activations NHWC, kernels HWIO, float32, groups 1, no dilation. Activations stay NHWC (oneDNN
// has direct NHWC kernels; converting every activation to a blocked layout would cost more memory traffic than it
// saves); kernels go to whatever layout the primitive prefers and back (they are small).
//
// Attributes of every handler: strides (sh, sw) and padding (top, bottom, left, right), the convolution's
// explicit zero padding as lax.conv_general_dilated takes it.
//
// Primitives are cached per shape; scratchpads are allocated per call (user-managed), so XLA may run two calls of
// the same primitive on two threads at once.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum class Kind { kForward, kBackwardData, kBackwardWeights };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// What one convolution is: enough to build its primitives.
struct Geometry {
  int64_t n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr;
  auto Key() const { return std::make_tuple(n, c, h, w, o, kh, kw, sh, sw, pt, pb, pl, pr); }
  memory::desc Src() const { return memory::desc({n, c, h, w}, memory::data_type::f32, tag::nhwc); }
  memory::desc Dst() const { return memory::desc({n, o, oh, ow}, memory::data_type::f32, tag::nhwc); }
  memory::desc UserWeights() const { return memory::desc({o, c, kh, kw}, memory::data_type::f32, tag::hwio); }
  memory::desc AnyWeights() const { return memory::desc({o, c, kh, kw}, memory::data_type::f32, tag::any); }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadLow() const { return {pt, pl}; }
  memory::dims PadHigh() const { return {pb, pr}; }
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

#if DNNL_VERSION_MAJOR >= 3
dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g) {
  return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.Src(),
          g.AnyWeights(), g.Dst(), g.Strides(), g.PadLow(), g.PadHigh(), UserScratchpad()};
}
dnnl::convolution_backward_data::primitive_desc BackwardDataPd(const Geometry& g) {
  return {Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(), g.Strides(),
          g.PadLow(), g.PadHigh(), ForwardPd(g), UserScratchpad()};
}
dnnl::convolution_backward_weights::primitive_desc BackwardWeightsPd(const Geometry& g) {
  return {Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(), g.Strides(),
          g.PadLow(), g.PadHigh(), ForwardPd(g), UserScratchpad()};
}
#else
dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g) {
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                       g.Src(), g.AnyWeights(), g.Dst(), g.Strides(), g.PadLow(), g.PadHigh());
  return {desc, UserScratchpad(), Engine()};
}
dnnl::convolution_backward_data::primitive_desc BackwardDataPd(const Geometry& g) {
  dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(),
                                             g.Dst(), g.Strides(), g.PadLow(), g.PadHigh());
  return {desc, UserScratchpad(), Engine(), ForwardPd(g)};
}
dnnl::convolution_backward_weights::primitive_desc BackwardWeightsPd(const Geometry& g) {
  dnnl::convolution_backward_weights::desc desc(dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(),
                                                g.Dst(), g.Strides(), g.PadLow(), g.PadHigh());
  return {desc, UserScratchpad(), Engine(), ForwardPd(g)};
}
#endif

// A built primitive, the layout its kernel argument wants, and its scratchpad size.
struct Built {
  dnnl::primitive primitive;
  memory::desc weights;
  memory::desc scratchpad;
};

template <typename Primitive, typename Pd>
std::unique_ptr<Built> Build(const Pd& pd, const memory::desc& weights) {
  return std::make_unique<Built>(Built{Primitive(pd), weights, pd.scratchpad_desc()});
}

const Built& Cached(Kind kind, const Geometry& g) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t>,
                  std::unique_ptr<Built>>
      cache;
  auto key = std::tuple_cat(std::make_tuple(static_cast<int>(kind)), g.Key());
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[key];
  if (!slot) {
    switch (kind) {
      case Kind::kForward: {
        auto pd = ForwardPd(g);
        slot = Build<dnnl::convolution_forward>(pd, pd.weights_desc());
        break;
      }
      case Kind::kBackwardData: {
        auto pd = BackwardDataPd(g);
        slot = Build<dnnl::convolution_backward_data>(pd, pd.weights_desc());
        break;
      }
      case Kind::kBackwardWeights: {
        auto pd = BackwardWeightsPd(g);
        slot = Build<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc());
        break;
      }
    }
  }
  return *slot;
}

ffi::Error Geometry_(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> y,
                     ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding, Geometry* g) {
  if (x.size() != 4 || kernel.size() != 4 || y.size() != 4 || strides.size() != 2 || padding.size() != 4) {
    return ffi::Error::InvalidArgument("cpu_conv: NHWC activations, HWIO kernel, 2 strides, 4 paddings");
  }
  *g = {x[0], x[3], x[1], x[2], kernel[3], kernel[0], kernel[1], y[1], y[2],
        strides[0], strides[1], padding[0], padding[1], padding[2], padding[3]};
  if (kernel[2] != g->c || y[0] != g->n || y[3] != g->o) {
    return ffi::Error::InvalidArgument("cpu_conv: shapes of input, kernel and output do not agree");
  }
  return ffi::Error::Success();
}

// Runs `built` with its kernel argument `weights_arg` given in HWIO at `user_weights`, reordering as needed:
// into the primitive's layout before (forward, backward data), out of it after (backward weights).
void Run(const Built& built, const Geometry& g, std::unordered_map<int, memory> args, int weights_arg,
         void* user_weights, bool weights_are_output) {
  auto& engine = Engine();
  dnnl::stream stream(engine);
  memory user(g.UserWeights(), engine, user_weights);
  memory weights = user;
  if (built.weights != g.UserWeights()) {
    weights = memory(built.weights, engine);
    if (!weights_are_output) dnnl::reorder(user, weights).execute(stream, user, weights);
  }
  args[weights_arg] = weights;
  std::vector<uint8_t> scratch(built.scratchpad.get_size());
  args[DNNL_ARG_SCRATCHPAD] = memory(built.scratchpad, engine, scratch.data());
  built.primitive.execute(stream, args);
  if (weights_are_output && weights != user) dnnl::reorder(weights, user).execute(stream, weights, user);
  stream.wait();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto e = Geometry_(x.dimensions(), kernel.dimensions(), y->dimensions(), strides, padding, &g); e.failure())
    return e;
  auto& engine = Engine();
  Run(Cached(Kind::kForward, g), g,
      {{DNNL_ARG_SRC, memory(g.Src(), engine, x.typed_data())}, {DNNL_ARG_DST, memory(g.Dst(), engine, y->typed_data())}},
      DNNL_ARG_WEIGHTS, kernel.typed_data(), false);
  return ffi::Error::Success();
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> dx,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto e = Geometry_(dx->dimensions(), kernel.dimensions(), dy.dimensions(), strides, padding, &g); e.failure())
    return e;
  auto& engine = Engine();
  Run(Cached(Kind::kBackwardData, g), g,
      {{DNNL_ARG_DIFF_DST, memory(g.Dst(), engine, dy.typed_data())},
       {DNNL_ARG_DIFF_SRC, memory(g.Src(), engine, dx->typed_data())}},
      DNNL_ARG_WEIGHTS, kernel.typed_data(), false);
  return ffi::Error::Success();
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dkernel,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto e = Geometry_(x.dimensions(), dkernel->dimensions(), dy.dimensions(), strides, padding, &g); e.failure())
    return e;
  auto& engine = Engine();
  Run(Cached(Kind::kBackwardWeights, g), g,
      {{DNNL_ARG_SRC, memory(g.Src(), engine, x.typed_data())},
       {DNNL_ARG_DIFF_DST, memory(g.Dst(), engine, dy.typed_data())}},
      DNNL_ARG_DIFF_WEIGHTS, dkernel->typed_data(), true);
  return ffi::Error::Success();
}

}  // namespace

#define SV_JAX_CONV_HANDLER(symbol, fn)                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, fn,                 \
                                ffi::Ffi::Bind()            \
                                    .Arg<ffi::Buffer<ffi::F32>>() \
                                    .Arg<ffi::Buffer<ffi::F32>>() \
                                    .Ret<ffi::Buffer<ffi::F32>>() \
                                    .Attr<ffi::Span<const int64_t>>("strides") \
                                    .Attr<ffi::Span<const int64_t>>("padding"));

SV_JAX_CONV_HANDLER(SvJaxConvForward, Forward)
SV_JAX_CONV_HANDLER(SvJaxConvBackwardData, BackwardData)
SV_JAX_CONV_HANDLER(SvJaxConvBackwardWeights, BackwardWeights)
