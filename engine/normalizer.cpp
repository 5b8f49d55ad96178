#include "engine/normalizer.hpp"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <stdexcept>

namespace troupe {

namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) {
    UErrorCode status = U_ZERO_ERROR;
    switch (form) {
      case NormalForm::nfc: n_ = icu::Normalizer2::getNFCInstance(status); break;
      case NormalForm::nfd: n_ = icu::Normalizer2::getNFDInstance(status); break;
      case NormalForm::nfkc: n_ = icu::Normalizer2::getNFKCInstance(status); break;
      case NormalForm::nfkd: n_ = icu::Normalizer2::getNFKDInstance(status); break;
    }
    if (U_FAILURE(status)) throw std::runtime_error("ICU normalizer unavailable");
  }
  void apply(std::string& text) const override {
    bool ascii = true;
    for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
    if (ascii) return;  // every normal form leaves ASCII alone
    UErrorCode status = U_ZERO_ERROR;
    icu::UnicodeString in = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
    if (n_->isNormalized(in, status) && U_SUCCESS(status)) return;
    status = U_ZERO_ERROR;
    icu::UnicodeString out = n_->normalize(in, status);
    if (U_FAILURE(status)) throw std::runtime_error("ICU normalization failed");
    text.clear();
    out.toUTF8String(text);
  }

 private:
  const icu::Normalizer2* n_ = nullptr;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void apply(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class Replace final : public Normalizer {
 public:
  Replace(std::string pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void apply(std::string& text) const override {
    if (pattern_.empty() || text.find(pattern_) == std::string::npos) return;
    std::string out;
    out.reserve(text.size() + text.size() / 4);
    size_t pos = 0;
    for (size_t at = text.find(pattern_); at != std::string::npos; at = text.find(pattern_, pos)) {
      out.append(text, pos, at - pos);
      out += content_;
      pos = at + pattern_.size();
    }
    out.append(text, pos);
    text = std::move(out);
  }

 private:
  std::string pattern_, content_;
};

class Sequence final : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void apply(std::string& text) const override {
    for (const auto& s : steps_) s->apply(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> make_unicode_normalizer(NormalForm form) { return std::make_unique<UnicodeNormalizer>(form); }
std::unique_ptr<Normalizer> make_prepend(std::string prefix) { return std::make_unique<Prepend>(std::move(prefix)); }
std::unique_ptr<Normalizer> make_replace(std::string pattern, std::string content) {
  return std::make_unique<Replace>(std::move(pattern), std::move(content));
}
std::unique_ptr<Normalizer> make_normalizer_sequence(std::vector<std::unique_ptr<Normalizer>> steps) {
  return std::make_unique<Sequence>(std::move(steps));
}

}  // namespace troupe
