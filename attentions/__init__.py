"""Built-in attention variants. Each registers lazily, so listing them imports no optional package."""

from harness.registry import register

register("softmax", "attentions.softmax.variant:SoftmaxAttention")
register("flash", "attentions.flash.variant:FlashAttention")
register("linear", "attentions.linear.variant:LinearAttention")
register("performer", "attentions.performer.variant:PerformerAttention")
register("nystrom", "attentions.nystrom.variant:NystromAttention")
register("luna", "attentions.luna.variant:LunaAttention")
register("luna_nested", "attentions.luna_nested.variant:LunaNestedAttention")
