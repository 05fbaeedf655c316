/* A plain single-file C implementation of the llama2.c forward pass, written
 * for kvattn's benchmarks as the comparison point: float loops, its own KV
 * cache, nothing from kvattn or Eigen. */
#ifndef KVATTN_BENCH_PLAIN_LLAMA_H
#define KVATTN_BENCH_PLAIN_LLAMA_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PlainLlama PlainLlama;

/* Loads a llama2.c checkpoint; NULL if it cannot be read. */
PlainLlama* plain_llama_open(const char* path);
void plain_llama_close(PlainLlama* m);
int plain_llama_vocab_size(const PlainLlama* m);
int plain_llama_seq_len(const PlainLlama* m);
/* Runs token at position pos (the cache must hold positions 0..pos-1);
 * returns the logits, [vocab_size], valid until the next call. */
const float* plain_llama_forward(PlainLlama* m, int token, int pos);

/* The same code built with -Ofast (plain_llama_fast.c). */
PlainLlama* plain_llama_fast_open(const char* path);
void plain_llama_fast_close(PlainLlama* m);
const float* plain_llama_fast_forward(PlainLlama* m, int token, int pos);

#ifdef __cplusplus
}
#endif

#endif
