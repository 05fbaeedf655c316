/* plain_llama.c again under other names, built with -Ofast (as llama2.c's
 * "runfast" target is): the plain C loops with float reassociation allowed,
 * so the compiler vectorizes the dot products. */
#define plain_llama_open plain_llama_fast_open
#define plain_llama_close plain_llama_fast_close
#define plain_llama_vocab_size plain_llama_fast_vocab_size
#define plain_llama_seq_len plain_llama_fast_seq_len
#define plain_llama_forward plain_llama_fast_forward
#include "plain_llama.c"
