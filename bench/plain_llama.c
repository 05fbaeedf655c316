/* See plain_llama.h. One token per call; keys and values are cached per
 * layer as [layer][position][kv_dim]. */
#include "plain_llama.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct PlainLlama {
  int dim, hidden, layers, heads, kv_heads, vocab, seq_len, head_size, kv_dim;
  float* file; /* every float after the header */
  const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *cls;
  float *x, *xb, *xb2, *hb, *hb2, *q, *att, *logits; /* activations */
  float *key_cache, *value_cache;                    /* [layers][seq_len][kv_dim] */
};

static void rmsnorm(float* out, const float* x, const float* w, int n) {
  float ss = 0.0f;
  for (int i = 0; i < n; i++) ss += x[i] * x[i];
  ss = 1.0f / sqrtf(ss / (float)n + 1e-5f);
  for (int i = 0; i < n; i++) out[i] = w[i] * (ss * x[i]);
}

/* out[d] = W[d][n] x[n] */
static void matvec(float* out, const float* x, const float* w, int n, int d) {
  for (int i = 0; i < d; i++) {
    float acc = 0.0f;
    const float* row = w + (size_t)i * (size_t)n;
    for (int j = 0; j < n; j++) acc += row[j] * x[j];
    out[i] = acc;
  }
}

static void softmax(float* x, int n) {
  float m = x[0], sum = 0.0f;
  for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
  for (int i = 0; i < n; i++) sum += (x[i] = expf(x[i] - m));
  for (int i = 0; i < n; i++) x[i] /= sum;
}

PlainLlama* plain_llama_open(const char* path) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  int32_t h[7];
  if (fread(h, sizeof h, 1, f) != 1) {
    fclose(f);
    return NULL;
  }
  PlainLlama* m = calloc(1, sizeof *m);
  m->dim = h[0];
  m->hidden = h[1];
  m->layers = h[2];
  m->heads = h[3];
  m->kv_heads = h[4];
  m->vocab = abs(h[5]);
  m->seq_len = h[6];
  m->head_size = m->dim / m->heads;
  m->kv_dim = m->kv_heads * m->head_size;
  fseek(f, 0, SEEK_END);
  const long bytes = ftell(f) - (long)sizeof h;
  fseek(f, (long)sizeof h, SEEK_SET);
  m->file = malloc((size_t)bytes);
  if (fread(m->file, 1, (size_t)bytes, f) != (size_t)bytes) {
    fclose(f);
    plain_llama_close(m);
    return NULL;
  }
  fclose(f);
  const size_t dim = (size_t)m->dim, L = (size_t)m->layers, kv = (size_t)m->kv_dim,
               hid = (size_t)m->hidden;
  const float* p = m->file;
  m->emb = p;
  p += (size_t)m->vocab * dim;
  m->rms_att = p;
  p += L * dim;
  m->wq = p;
  p += L * dim * dim;
  m->wk = p;
  p += L * kv * dim;
  m->wv = p;
  p += L * kv * dim;
  m->wo = p;
  p += L * dim * dim;
  m->rms_ffn = p;
  p += L * dim;
  m->w1 = p;
  p += L * hid * dim;
  m->w2 = p;
  p += L * dim * hid;
  m->w3 = p;
  p += L * hid * dim;
  m->rms_final = p;
  p += dim;
  p += (size_t)m->seq_len * (size_t)m->head_size; /* legacy RoPE tables */
  m->cls = h[5] > 0 ? m->emb : p;
  m->x = calloc(dim, sizeof(float));
  m->xb = calloc(dim, sizeof(float));
  m->xb2 = calloc(dim, sizeof(float));
  m->hb = calloc(hid, sizeof(float));
  m->hb2 = calloc(hid, sizeof(float));
  m->q = calloc(dim, sizeof(float));
  m->att = calloc((size_t)m->heads * (size_t)m->seq_len, sizeof(float));
  m->logits = calloc((size_t)m->vocab, sizeof(float));
  m->key_cache = calloc(L * (size_t)m->seq_len * kv, sizeof(float));
  m->value_cache = calloc(L * (size_t)m->seq_len * kv, sizeof(float));
  return m;
}

void plain_llama_close(PlainLlama* m) {
  if (!m) return;
  free(m->file);
  free(m->x);
  free(m->xb);
  free(m->xb2);
  free(m->hb);
  free(m->hb2);
  free(m->q);
  free(m->att);
  free(m->logits);
  free(m->key_cache);
  free(m->value_cache);
  free(m);
}

int plain_llama_vocab_size(const PlainLlama* m) { return m->vocab; }
int plain_llama_seq_len(const PlainLlama* m) { return m->seq_len; }

const float* plain_llama_forward(PlainLlama* m, int token, int pos) {
  const int dim = m->dim, kv_dim = m->kv_dim, hs = m->head_size, hid = m->hidden;
  const int group = m->heads / m->kv_heads;
  memcpy(m->x, m->emb + (size_t)token * (size_t)dim, (size_t)dim * sizeof(float));
  for (int l = 0; l < m->layers; l++) {
    const size_t L = (size_t)l;
    rmsnorm(m->xb, m->x, m->rms_att + L * (size_t)dim, dim);
    float* k = m->key_cache + (L * (size_t)m->seq_len + (size_t)pos) * (size_t)kv_dim;
    float* v = m->value_cache + (L * (size_t)m->seq_len + (size_t)pos) * (size_t)kv_dim;
    matvec(m->q, m->xb, m->wq + L * (size_t)dim * (size_t)dim, dim, dim);
    matvec(k, m->xb, m->wk + L * (size_t)kv_dim * (size_t)dim, dim, kv_dim);
    matvec(v, m->xb, m->wv + L * (size_t)kv_dim * (size_t)dim, dim, kv_dim);
    for (int i = 0; i < dim; i += 2) { /* RoPE, interleaved pairs */
      const float angle = (float)pos * powf(10000.0f, -(float)(i % hs) / (float)hs);
      const float c = cosf(angle), s = sinf(angle);
      float a = m->q[i], b = m->q[i + 1];
      m->q[i] = a * c - b * s;
      m->q[i + 1] = a * s + b * c;
      if (i < kv_dim) {
        a = k[i];
        b = k[i + 1];
        k[i] = a * c - b * s;
        k[i + 1] = a * s + b * c;
      }
    }
    for (int h = 0; h < m->heads; h++) {
      const float* qh = m->q + h * hs;
      float* att = m->att + h * m->seq_len;
      const size_t kv_off = (size_t)(h / group) * (size_t)hs;
      for (int t = 0; t <= pos; t++) {
        const float* kt =
            m->key_cache + (L * (size_t)m->seq_len + (size_t)t) * (size_t)kv_dim + kv_off;
        float score = 0.0f;
        for (int i = 0; i < hs; i++) score += qh[i] * kt[i];
        att[t] = score / sqrtf((float)hs);
      }
      softmax(att, pos + 1);
      float* out = m->xb + h * hs;
      memset(out, 0, (size_t)hs * sizeof(float));
      for (int t = 0; t <= pos; t++) {
        const float* vt =
            m->value_cache + (L * (size_t)m->seq_len + (size_t)t) * (size_t)kv_dim + kv_off;
        for (int i = 0; i < hs; i++) out[i] += att[t] * vt[i];
      }
    }
    matvec(m->xb2, m->xb, m->wo + L * (size_t)dim * (size_t)dim, dim, dim);
    for (int i = 0; i < dim; i++) m->x[i] += m->xb2[i];
    rmsnorm(m->xb, m->x, m->rms_ffn + L * (size_t)dim, dim);
    matvec(m->hb, m->xb, m->w1 + L * (size_t)hid * (size_t)dim, dim, hid);
    matvec(m->hb2, m->xb, m->w3 + L * (size_t)hid * (size_t)dim, dim, hid);
    for (int i = 0; i < hid; i++) m->hb[i] = m->hb[i] / (1.0f + expf(-m->hb[i])) * m->hb2[i];
    matvec(m->xb, m->hb, m->w2 + L * (size_t)dim * (size_t)hid, hid, dim);
    for (int i = 0; i < dim; i++) m->x[i] += m->xb[i];
  }
  rmsnorm(m->x, m->x, m->rms_final, dim);
  matvec(m->logits, m->x, m->cls, dim, m->vocab);
  return m->logits;
}
