"""frcnn_trt.model"""
