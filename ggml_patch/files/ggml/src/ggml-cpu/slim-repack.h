#pragma once

// slim2gguf: ggml-cpu's extra buffer for the SLIM types (slim-repack.cpp): MUL_MAT weights stored as tiles of 8
// rows (slim.c), multiplied by a tiled gemm for prompts and decode alike.

#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

ggml_backend_buffer_type_t ggml_backend_cpu_slim_buffer_type(void);

#ifdef __cplusplus
}
#endif
