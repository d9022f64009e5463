"""frcnn_trt.train"""
