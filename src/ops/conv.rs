//! Short causal depthwise convolution. (to be written)
