#pragma once
/// \file
/// A byte-fallback BPE tokenizer in the llama2.c / SentencePiece style.
///
/// Encoding: prepend a space to non-empty text; map each UTF-8 character to
/// its piece, or to one byte piece per byte (id = byte + 3) when it has none;
/// then repeatedly merge the adjacent pair whose concatenation is a piece with
/// the highest score (the leftmost on ties) until no pair merges. BOS (id 1)
/// goes first when asked for.
/// Decoding: a piece spelled <0xNN> is the raw byte NN; a piece that follows
/// BOS drops its leading space.

#include <kvattn/error.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kvattn {

class Tokenizer {
 public:
  static constexpr int kUnk = 0;
  static constexpr int kBos = 1;
  static constexpr int kEos = 2;
  static constexpr int kFirstByte = 3;  ///< id of the piece <0x00>

  /// pieces[id] and scores[id] for every id. Throws std::invalid_argument if
  /// the sizes differ or there are fewer than kFirstByte + 256 pieces (the
  /// byte fallback needs ids 3..258).
  Tokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    constexpr const char* fn = "Tokenizer";
    detail::check_size(fn, "scores", Eigen::Index(scores_.size()), "pieces.size()",
                       Eigen::Index(pieces_.size()));
    detail::check_arg(pieces_.size() >= size_t(kFirstByte + 256), fn, "pieces.size()",
                      pieces_.size(), ">= 259 (special tokens and 256 byte pieces)");
    lookup_.reserve(pieces_.size());
    for (size_t id = 0; id < pieces_.size(); ++id)
      lookup_.emplace(pieces_[id], int(id));  // first wins
  }

  int vocab_size() const { return int(pieces_.size()); }
  const std::string& piece(int id) const { return pieces_.at(size_t(id)); }
  float score(int id) const { return scores_.at(size_t(id)); }

  /// Token ids of text, BOS first when bos is true.
  std::vector<int> encode(std::string_view text, bool bos = true) const {
    std::vector<int> ids;
    if (bos) ids.push_back(kBos);
    if (text.empty()) return ids;
    std::vector<int> toks;
    const std::string with_space = " " + std::string(text);
    for (size_t i = 0; i < with_space.size();) {
      // One UTF-8 character: a lead byte and at most 3 continuation bytes.
      size_t len = 1;
      while (len < 4 && i + len < with_space.size() &&
             (static_cast<unsigned char>(with_space[i + len]) & 0xC0) == 0x80) {
        ++len;
      }
      const auto it = lookup_.find(with_space.substr(i, len));
      if (it != lookup_.end()) {
        toks.push_back(it->second);
      } else {
        for (size_t b = 0; b < len; ++b) {
          toks.push_back(kFirstByte + static_cast<unsigned char>(with_space[i + b]));
        }
      }
      i += len;
    }
    // Merge the best-scoring adjacent pair until none is a piece.
    std::string pair;
    for (;;) {
      float best_score = 0;
      int best_id = -1;
      size_t best_at = 0;
      for (size_t i = 0; i + 1 < toks.size(); ++i) {
        pair.assign(pieces_[size_t(toks[i])]);
        pair += pieces_[size_t(toks[i + 1])];
        const auto it = lookup_.find(pair);
        if (it != lookup_.end() && (best_id < 0 || scores_[size_t(it->second)] > best_score)) {
          best_score = scores_[size_t(it->second)];
          best_id = it->second;
          best_at = i;
        }
      }
      if (best_id < 0) break;
      toks[best_at] = best_id;
      toks.erase(toks.begin() + std::ptrdiff_t(best_at) + 1);
    }
    ids.insert(ids.end(), toks.begin(), toks.end());
    return ids;
  }

  /// The text of token `token` when it follows token `prev`.
  std::string decode(int prev, int token) const {
    detail::check_arg(token >= 0 && token < vocab_size(), "Tokenizer::decode", "token", token,
                      "a valid id");
    const std::string& p = pieces_[size_t(token)];
    const int b = parse_byte_piece(p);
    if (b >= 0) return std::string(1, char(b));
    if (prev == kBos && !p.empty() && p[0] == ' ') return p.substr(1);
    return p;
  }

  /// The text of a sequence of ids; a leading BOS is dropped (and strips the
  /// next piece's leading space).
  std::string decode(const std::vector<int>& ids) const {
    std::string out;
    int prev = -1;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!(i == 0 && ids[i] == kBos)) out += decode(prev, ids[i]);
      prev = ids[i];
    }
    return out;
  }

 private:
  // NN for a piece spelled exactly <0xNN> (hex digits), else -1.
  static int parse_byte_piece(const std::string& p) {
    if (p.size() != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = hex(p[3]), lo = hex(p[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> lookup_;  // piece -> its first id
};

}  // namespace kvattn
