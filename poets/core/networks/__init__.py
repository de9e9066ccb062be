"""The networks --architecture names: EfficientNet-Lite built offline from
installed weights, and the codelab's own MobileNet and Inception graphs."""
