"""Host side of the edge export: deploy mode, bitstream v1, interpreters, C and TFLite writers."""
