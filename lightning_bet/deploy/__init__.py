"""Host side of the edge export: deploy mode, bitstreams v1/v2, interpreters, C and TFLite."""
