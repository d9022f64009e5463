"""frcnn_trt.engines"""
