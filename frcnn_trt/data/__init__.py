"""frcnn_trt.data"""
