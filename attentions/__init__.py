"""Built-in attention variants. Each registers lazily, so listing them imports no optional package."""

from harness.plugins.variants import VARIANTS

VARIANTS.register("softmax", "attentions.softmax.variant:SoftmaxAttention")
VARIANTS.register("flash", "attentions.flash.variant:FlashAttention")
VARIANTS.register("linear", "attentions.linear.variant:LinearAttention")
VARIANTS.register("performer", "attentions.performer.variant:PerformerAttention")
VARIANTS.register("nystrom", "attentions.nystrom.variant:NystromAttention")
VARIANTS.register("luna", "attentions.luna.variant:LunaAttention")
VARIANTS.register("luna_nested", "attentions.luna_nested.variant:LunaNestedAttention")
VARIANTS.register("window", "attentions.window.variant:WindowAttention")
VARIANTS.register("taylor", "attentions.taylor.variant:TaylorAttention")
VARIANTS.register("deltanet", "attentions.deltanet.variant:DeltaNetAttention")
VARIANTS.register("hedgehog", "attentions.hedgehog.variant:HedgehogAttention")
