"""Host side of the edge export: deploy mode, bitstream v1/v2, interpreters, C and TFLite writers."""
