// Stop strings over streamed text: text is released only once it cannot be the start of a stop
// string, and generation ends at the first stop string, which is cut from the output (OpenAI's and
// vLLM's default). Works on whole UTF-8 characters: it never splits one.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace troupe {

class StopChecker {
 public:
  explicit StopChecker(std::vector<std::string> stops);

  // Appends new text; returns the text that is now final (possibly empty). After a stop string
  // was found, stopped() is true and later calls return nothing.
  std::string push(std::string_view text);
  // The text still held back (when generation ended for another reason).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace troupe
