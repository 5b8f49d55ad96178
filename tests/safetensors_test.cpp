// Reading and writing safetensors: round trips of every dtype, sharded checkpoints, and a corpus of
// malformed files built here, each of which must be refused with a message naming file and tensor.
#include "engine/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>

#include "tests/test_support.hpp"

namespace troupe {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file from its parts; `declared` overrides the header length field.
std::string raw_file(const std::string& header, const std::string& data, std::optional<uint64_t> declared = {}) {
  return le64(declared.value_or(header.size())) + header + data;
}

// Runs `f`, which must throw WeightError, and checks that the message holds every one of `parts`.
void expect_weight_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no WeightError thrown; expected one mentioning '" << parts.front() << "'";
  } catch (const WeightError& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string bytes_of(const HostView& v) { return std::string(static_cast<const char*>(v.data), v.nbytes()); }

struct Sample {
  TensorInfo info;
  std::string bytes;
};

// One tensor of every supported dtype, plus a scalar and an empty tensor, with distinct values. U8
// comes last so that every other tensor stays aligned to its element size.
std::vector<Sample> every_dtype() {
  std::vector<Sample> s;
  s.push_back({{"f32", DType::f32, {2, 3}}, bytes_of(std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e30f})});
  s.push_back({{"f16", DType::f16, {4}}, bytes_of(std::vector<uint16_t>{0x3c00, 0xc000, 0x7bff, 0x0001})});
  s.push_back({{"model.layers.0.bf16", DType::bf16, {3, 2}},
               bytes_of(std::vector<uint16_t>{0x3f80, 0xbf80, 0x4049, 0x0000, 0x7f80, 0x3e4d})});
  s.push_back({{"i32", DType::i32, {5}}, bytes_of(std::vector<int32_t>{-7, 0, 1, 2147483647, -2147483647 - 1})});
  s.push_back({{"i64", DType::i64, {2, 2}}, bytes_of(std::vector<int64_t>{-1, int64_t{1} << 40, 3, 4})});
  s.push_back({{"scalar", DType::f32, {}}, bytes_of(std::vector<float>{42.0f})});
  s.push_back({{"empty", DType::bf16, {0, 4}}, std::string()});
  s.push_back({{"name with \"quotes\", \\ and \n newline \xc3\xa9", DType::f32, {1}},
               bytes_of(std::vector<float>{7.0f})});
  s.push_back({{"u8", DType::u8, {7}}, std::string("\x00\x01\x7f\x80\xfe\xff\x10", 7)});
  return s;
}

void write_samples(const fs::path& path, const std::vector<Sample>& samples,
                   const std::map<std::string, std::string>& metadata) {
  std::vector<TensorInfo> entries;
  for (const auto& s : samples) entries.push_back(s.info);
  SafetensorsWriter w(path, entries, metadata);
  for (const auto& s : samples) w.write(s.info.name, s.bytes.data(), s.bytes.size());
  w.close();
}

TEST(Safetensors, RoundTripEveryDtype) {
  auto dir = test::scratch_dir();
  auto path = dir / "model.safetensors";
  auto samples = every_dtype();
  std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "a \"quoted\"\tvalue"}};
  write_samples(path, samples, meta);

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& want = samples[i];
    EXPECT_EQ(f.tensors()[i].name, want.info.name);  // in data order, which is the written order
    ASSERT_TRUE(f.contains(want.info.name));
    HostView v = f.tensor(want.info.name);
    EXPECT_EQ(v.dtype, want.info.dtype) << want.info.name;
    EXPECT_EQ(v.shape, want.info.shape) << want.info.name;
    EXPECT_EQ(bytes_of(v), want.bytes) << want.info.name;
  }
  EXPECT_FALSE(f.contains("absent"));
  float f32[6];
  std::memcpy(f32, f.tensor("f32").data, sizeof f32);
  EXPECT_EQ(f32[2], 3.25f);
  EXPECT_EQ(f.tensor("scalar").numel(), 1);

  // The layout Hugging Face writes: header length a multiple of 8, __metadata__ first, tensors packed.
  std::string raw = read_file(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(raw[i]);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(raw.substr(8, 16), "{\"__metadata__\":");
  uint64_t data_bytes = 0;
  for (const auto& s : samples) data_bytes += s.bytes.size();
  EXPECT_EQ(raw.size(), 8 + header_len + data_bytes);
  EXPECT_EQ(raw.find(".partial"), std::string::npos);
  EXPECT_FALSE(fs::exists(path.string() + ".partial"));
}

TEST(Safetensors, ViewsLiveAsLongAsACopyOfTheFile) {
  auto dir = test::scratch_dir();
  auto samples = every_dtype();
  write_samples(dir / "a.safetensors", samples, {});
  HostView v;
  std::optional<SafetensorsFile> keep;
  {
    auto f = SafetensorsFile::open(dir / "a.safetensors");
    EXPECT_TRUE(f.metadata().empty());
    keep = f;
    v = f.tensor("i64");
  }
  EXPECT_EQ(bytes_of(v), samples[4].bytes);
  EXPECT_EQ(keep->path(), dir / "a.safetensors");
}

TEST(Safetensors, WriterRefusesMisuse) {
  auto dir = test::scratch_dir();
  auto path = dir / "w.safetensors";
  std::vector<float> four(4, 1.0f);
  std::vector<TensorInfo> entries{{"first", DType::f32, {4}}, {"second", DType::f32, {2, 2}}};
  {
    SafetensorsWriter w(path, entries);
    expect_weight_error([&] { w.write("second", four.data(), 16); }, {"w.safetensors", "'second'", "'first'"});
    expect_weight_error([&] { w.write("first", four.data(), 12); }, {"w.safetensors", "'first'", "12", "16"});
    w.write("first", four.data(), 16);
    expect_weight_error([&] { w.close(); }, {"w.safetensors", "'second'", "never written"});
  }
  EXPECT_FALSE(fs::exists(path)) << "an incomplete file must not be left where weights are looked for";
  EXPECT_FALSE(fs::exists(path.string() + ".partial"));

  {
    SafetensorsWriter w(path, entries);
    w.write("first", four.data(), 16);
    w.write("second", four.data(), 16);
    expect_weight_error([&] { w.write("third", four.data(), 16); }, {"w.safetensors", "'third'"});
    w.close();
  }
  EXPECT_EQ(SafetensorsFile::open(path).tensors().size(), 2u);

  expect_weight_error([&] { SafetensorsWriter(path, {{"a", DType::f32, {1}}, {"a", DType::f32, {1}}}); },
                      {"w.safetensors", "'a'", "twice"});
  expect_weight_error([&] { SafetensorsWriter(path, {{"a", DType::f32, {2}, 0, 8}, {"b", DType::f32, {2}, 16, 24}}); },
                      {"w.safetensors", "'b'", "[16, 24]"});
}

// --- the malformed corpus --------------------------------------------------------------------------

struct Malformed : ::testing::Test {
  fs::path dir;
  void SetUp() override { dir = test::scratch_dir(); }

  // Writes `bytes` as `name` and expects opening it to fail with a message holding `parts` and the
  // file's name.
  void expect_refused(const std::string& name, const std::string& bytes, std::vector<std::string> parts) {
    write_file(dir / name, bytes);
    parts.push_back(name);
    expect_weight_error([&] { SafetensorsFile::open(dir / name); }, parts);
  }
};

// A valid two-tensor file to cut and corrupt.
std::string valid_file() {
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}})";
  return raw_file(header, std::string(16, '\x01'));
}

TEST_F(Malformed, ValidBaselineOpens) {
  write_file(dir / "ok.safetensors", valid_file());
  auto f = SafetensorsFile::open(dir / "ok.safetensors");
  EXPECT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensor("b").shape, (std::vector<int64_t>{2, 2}));
}

TEST_F(Malformed, TruncatedFiles) {
  std::string ok = valid_file();
  expect_refused("empty.safetensors", "", {"too short"});
  expect_refused("seven.safetensors", ok.substr(0, 7), {"too short"});
  expect_refused("cut_in_header.safetensors", ok.substr(0, 8 + 20), {"runs past the end of the file"});
  // Cut in the data: tensor b's bytes are no longer all there.
  expect_refused("cut_in_data.safetensors", ok.substr(0, ok.size() - 3), {"tensor 'b'", "past the end of the data"});
}

TEST_F(Malformed, HeaderLengthLies) {
  std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  expect_refused("past_end.safetensors", raw_file(header, "abcd", header.size() + 5), {"runs past the end"});
  expect_refused("huge.safetensors", raw_file(header, "abcd", uint64_t{1} << 62), {"exceeds"});
  expect_refused("all_ones.safetensors", raw_file(header, "abcd", ~uint64_t{0}), {"exceeds"});
}

TEST_F(Malformed, HeaderNotAJsonObject) {
  expect_refused("not_json.safetensors", raw_file("{\"a\": {\"dtype\": ", ""), {"not valid JSON"});
  expect_refused("garbage.safetensors", raw_file(std::string("\xff\xfe\x00\x01", 4), ""), {"not valid JSON"});
  expect_refused("array.safetensors", raw_file("[1, 2, 3]", ""), {"not a JSON object"});
  expect_refused("entry_not_object.safetensors", raw_file(R"({"w": 5})", ""), {"tensor 'w'", "not an object"});
  expect_refused("bad_metadata.safetensors", raw_file(R"({"__metadata__": {"format": 1}})", ""),
                 {"__metadata__", "format"});
}

TEST_F(Malformed, OffsetsOutOfRangeOrReversed) {
  expect_refused("out_of_range.safetensors",
                 raw_file(R"({"w":{"dtype":"U8","shape":[1000],"data_offsets":[0,1000]}})", std::string(16, 'x')),
                 {"tensor 'w'", "[0, 1000]", "past the end of the data section (16 bytes)"});
  expect_refused("reversed.safetensors",
                 raw_file(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[8,0]}})", std::string(16, 'x')),
                 {"tensor 'w'", "[8, 0]", "reversed"});
  expect_refused("three_offsets.safetensors",
                 raw_file(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8,16]}})", std::string(16, 'x')),
                 {"tensor 'w'", "data_offsets"});
  expect_refused("negative_offset.safetensors",
                 raw_file(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[-8,0]}})", std::string(16, 'x')),
                 {"tensor 'w'", "data_offsets"});
}

TEST_F(Malformed, ByteSpanDisagreesWithShape) {
  expect_refused("span.safetensors",
                 raw_file(R"({"model.norm.weight":{"dtype":"BF16","shape":[64],"data_offsets":[0,100]}})",
                          std::string(128, 'x')),
                 {"tensor 'model.norm.weight': data_offsets [0, 100] hold 100 bytes but shape [64] of BF16 needs 128"});
}

TEST_F(Malformed, UnknownDtype) {
  expect_refused("fp8.safetensors",
                 raw_file(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", std::string(4, 'x')),
                 {"tensor 'w'", "F8_E4M3"});
  expect_refused("no_dtype.safetensors", raw_file(R"({"w":{"shape":[4],"data_offsets":[0,4]}})", std::string(4, 'x')),
                 {"tensor 'w'", "dtype"});
}

TEST_F(Malformed, BadShapes) {
  expect_refused("negative.safetensors",
                 raw_file(R"({"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}})", std::string(16, 'x')),
                 {"tensor 'w'", "negative dimension -1"});
  expect_refused("fraction.safetensors",
                 raw_file(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,10]}})", std::string(16, 'x')),
                 {"tensor 'w'", "integers"});
  expect_refused("overflow.safetensors",
                 raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
                 {"tensor 'w'", "too many elements"});
}

TEST_F(Malformed, OverlappingTensors) {
  expect_refused("overlap.safetensors",
                 raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          std::string(16, 'x')),
                 {"tensor 'b'", "overlap tensor 'a'"});
  expect_refused("duplicate.safetensors",
                 raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                          std::string(16, 'x')),
                 {"tensor 'a'", "twice"});
  // Empty tensors hold no bytes: wherever they point, they overlap nothing.
  write_file(dir / "empty_inside.safetensors",
             raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                      std::string(8, 'x')));
  EXPECT_EQ(SafetensorsFile::open(dir / "empty_inside.safetensors").tensor("e").numel(), 0);
}

TEST_F(Malformed, MissingFile) {
  expect_weight_error([&] { SafetensorsFile::open(dir / "nope.safetensors"); }, {"nope.safetensors", "cannot open"});
}

// --- model directories -----------------------------------------------------------------------------

void write_index(const fs::path& dir, const std::string& weight_map) {
  write_file(dir / "model.safetensors.index.json",
             R"({"metadata": {"total_size": 0}, "weight_map": )" + weight_map + "}");
}

// Two shards: layers 0 in the first, layer 1 and the norm in the second.
void write_two_shards(const fs::path& dir) {
  std::vector<float> a{1, 2, 3, 4}, b{5, 6}, n{7, 8, 9};
  {
    SafetensorsWriter w(dir / "model-00001-of-00002.safetensors", {{"layers.0.w", DType::f32, {2, 2}}});
    w.write("layers.0.w", a.data(), 16);
    w.close();
  }
  {
    SafetensorsWriter w(dir / "model-00002-of-00002.safetensors",
                        {{"layers.1.w", DType::f32, {2}}, {"norm.weight", DType::f32, {3}}});
    w.write("layers.1.w", b.data(), 8);
    w.write("norm.weight", n.data(), 12);
    w.close();
  }
}

TEST(WeightFiles, ShardedRoundTrip) {
  auto dir = test::scratch_dir();
  write_two_shards(dir);
  write_index(dir, R"({"norm.weight": "model-00002-of-00002.safetensors",
                       "layers.0.w": "model-00001-of-00002.safetensors",
                       "layers.1.w": "model-00002-of-00002.safetensors"})");
  auto w = WeightFiles::open(dir);
  EXPECT_EQ(w.names(), (std::vector<std::string>{"layers.0.w", "layers.1.w", "norm.weight"}));
  EXPECT_EQ(w.total_bytes(), 36u);
  EXPECT_TRUE(w.contains("layers.1.w"));
  EXPECT_FALSE(w.contains("lm_head.weight"));
  HostView n = w.get("norm.weight");
  EXPECT_EQ(n.shape, std::vector<int64_t>{3});
  EXPECT_EQ(bytes_of(n), bytes_of(std::vector<float>{7, 8, 9}));
  EXPECT_EQ(bytes_of(w.get("layers.0.w")), bytes_of(std::vector<float>{1, 2, 3, 4}));
  expect_weight_error([&] { w.get("lm_head.weight"); }, {dir.string() + ": missing tensor 'lm_head.weight'"});
}

TEST(WeightFiles, SingleFile) {
  auto dir = test::scratch_dir();
  auto samples = every_dtype();
  write_samples(dir / "model.safetensors", samples, {{"format", "pt"}});
  auto w = WeightFiles::open(dir);
  EXPECT_EQ(w.names().size(), samples.size());
  uint64_t total = 0;
  for (const auto& s : samples) {
    total += s.bytes.size();
    EXPECT_EQ(bytes_of(w.get(s.info.name)), s.bytes);
  }
  EXPECT_EQ(w.total_bytes(), total);
  expect_weight_error([&] { w.get("model.embed_tokens.weight"); },
                      {dir.string(), "missing tensor 'model.embed_tokens.weight'"});
}

TEST(WeightFiles, IndexNamesAMissingShard) {
  auto dir = test::scratch_dir();
  write_two_shards(dir);
  write_index(dir, R"({"layers.0.w": "model-00001-of-00002.safetensors",
                       "layers.1.w": "model-00003-of-00003.safetensors"})");
  expect_weight_error([&] { WeightFiles::open(dir); },
                      {"model.safetensors.index.json", "'layers.1.w'", "model-00003-of-00003.safetensors", "not exist"});
}

TEST(WeightFiles, IndexNamesATensorAbsentFromItsShard) {
  auto dir = test::scratch_dir();
  write_two_shards(dir);
  write_index(dir, R"({"layers.0.w": "model-00001-of-00002.safetensors",
                       "layers.1.w": "model-00001-of-00002.safetensors"})");
  expect_weight_error([&] { WeightFiles::open(dir); },
                      {"model.safetensors.index.json", "'layers.1.w'", "model-00001-of-00002.safetensors",
                       "does not contain it"});
}

TEST(WeightFiles, BadIndexFiles) {
  auto dir = test::scratch_dir();
  write_two_shards(dir);
  write_file(dir / "model.safetensors.index.json", "{\"weight_map\": ");
  expect_weight_error([&] { WeightFiles::open(dir); }, {"model.safetensors.index.json", "not valid JSON"});
  write_file(dir / "model.safetensors.index.json", R"({"metadata": {}})");
  expect_weight_error([&] { WeightFiles::open(dir); }, {"model.safetensors.index.json", "weight_map"});
  write_index(dir, R"({"layers.0.w": "../elsewhere/model.safetensors"})");
  expect_weight_error([&] { WeightFiles::open(dir); }, {"model.safetensors.index.json", "'layers.0.w'", "inside"});
}

TEST(WeightFiles, CorruptShardIsNamed) {
  auto dir = test::scratch_dir();
  write_two_shards(dir);
  std::string second = read_file(dir / "model-00002-of-00002.safetensors");
  write_file(dir / "model-00002-of-00002.safetensors", second.substr(0, second.size() - 4));
  write_index(dir, R"({"layers.0.w": "model-00001-of-00002.safetensors",
                       "norm.weight": "model-00002-of-00002.safetensors"})");
  expect_weight_error([&] { WeightFiles::open(dir); }, {"model-00002-of-00002.safetensors", "'norm.weight'"});
}

TEST(WeightFiles, DirectoryWithoutWeights) {
  auto dir = test::scratch_dir();
  write_file(dir / "config.json", "{}");
  expect_weight_error([&] { WeightFiles::open(dir); },
                      {dir.string(), "model.safetensors", "model.safetensors.index.json"});
  expect_weight_error([&] { WeightFiles::open(dir / "absent"); }, {(dir / "absent").string()});
}

}  // namespace
}  // namespace troupe
