// Normalizers of `tokenizer.json` that the supported tokenizers use: Unicode normal forms (through
// ICU), Prepend (Llama 2's "▁"), Replace of a literal string, and Sequence. Each rewrites the text of
// one stretch between added tokens before pre-tokenization.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace troupe {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void apply(std::string& text) const = 0;
};

enum class NormalForm { nfc, nfd, nfkc, nfkd };
std::unique_ptr<Normalizer> make_unicode_normalizer(NormalForm form);
// Prepends `prefix` to non-empty text.
std::unique_ptr<Normalizer> make_prepend(std::string prefix);
// Replaces every non-overlapping occurrence of `pattern`, left to right.
std::unique_ptr<Normalizer> make_replace(std::string pattern, std::string content);
std::unique_ptr<Normalizer> make_normalizer_sequence(std::vector<std::unique_ptr<Normalizer>> steps);

}  // namespace troupe
