#include "engine/incremental_detokenizer.hpp"

namespace troupe {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::decode_window(bool* final) {
  std::string text = tokenizer_->decode_window(window_, tokens_before_, text_before_, skip_special_, final);
  if (!*final) return {};
  // A final window's text never changes again, whatever follows: the next window starts afresh.
  bool had_tokens = tokenizer_->count_tokens(window_, skip_special_) > 0;
  if (!text_before_ && had_tokens) {
    // Text that the stream's start treatment removed (Llama 2's leading space) still counts as
    // text: the strip has happened and must not happen again in a later window.
    bool ignored;
    text_before_ = !text.empty() || !tokenizer_->decode_window(window_, true, true, skip_special_, &ignored).empty();
  }
  tokens_before_ = tokens_before_ || had_tokens;
  window_.clear();
  return text;
}

std::string IncrementalDetokenizer::push(int32_t id) {
  window_.push_back(id);
  bool final = false;
  return decode_window(&final);
}

std::string IncrementalDetokenizer::finish() {
  if (window_.empty()) return {};
  std::string text;
  bool final = false;
  text = tokenizer_->decode_window(window_, tokens_before_, text_before_, skip_special_, &final);
  // Nothing follows: the window's text is what the full decode has for it, finished or not.
  window_.clear();
  tokens_before_ = true;
  text_before_ = text_before_ || !text.empty();
  return text;
}

}  // namespace troupe
