// Writes JSON files the way Hugging Face's tools do (two-space indent, floats as Python prints them,
// a final newline), so the files the model maker writes read like the hub's.
#pragma once

#include <boost/json/value.hpp>
#include <filesystem>
#include <string>

namespace troupe {

std::string pretty_json(const boost::json::value& v);
void write_json_file(const std::filesystem::path& path, const boost::json::value& v);

}  // namespace troupe
