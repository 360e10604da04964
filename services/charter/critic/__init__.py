"""SL-CAI critique -> revision rounds: principle sampling, prompt templates, output checks, the loop.

Pure domain code over `InferenceClient`: no grpc, no generated code.
"""
