// The GGUF container reader: every metadata type, alignment, tensor infos,
// memory-mapped and in-memory files, and every rejection (truncation at
// every byte, bad magic, versions, lengths and counts past the end, absurd
// dims, unknown types), on hand-made files.
#include "gguf_writer.hpp"

// ---------------------------------------------------------------------------
// The container

TEST(GgufReader, ReadsEveryMetadataType) {
  const GgufFile f = parse(every_type_file());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensors().size(), 0u);
  const std::vector<std::string> keys = {
      "u8",    "i8",     "u16",    "i16",   "u32",   "i32",   "f32",   "bool",   "str",
      "u64",   "u64max", "i64",    "f64",   "a.u8",  "a.i8",  "a.u16", "a.i16",  "a.u32",
      "a.i32", "a.f32",  "a.bool", "a.str", "a.u64", "a.i64", "a.f64", "a.empty"};
  EXPECT_EQ(f.keys(), keys);
  EXPECT_TRUE(f.has("f64"));
  EXPECT_FALSE(f.has("missing"));
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_EQ(f.value("u16").type, GgufType::UInt16);

  EXPECT_EQ(f.get_uint("u8"), 200u);
  EXPECT_EQ(f.get_int("i8"), -100);
  EXPECT_EQ(f.get_uint("u16"), 60000u);
  EXPECT_EQ(f.get_int("i16"), -30000);
  EXPECT_EQ(f.get_uint("u32"), 4000000000u);
  EXPECT_EQ(f.get_int("u32"), 4000000000);
  EXPECT_EQ(f.get_int("i32"), -2000000000);
  EXPECT_EQ(f.get_float("f32"), 1.5);
  EXPECT_TRUE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("str"), "h\xC3\xA9llo");
  EXPECT_EQ(f.get_uint("u64"), (uint64_t(1) << 40) + 3);
  EXPECT_EQ(f.get_uint("u64max"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f.get_int("i64"), -(int64_t(1) << 40));
  EXPECT_EQ(f.get_float("f64"), 0.1);
  EXPECT_EQ(f.get_float("i16"), -30000.0);  // integers convert
  EXPECT_EQ(f.get_float("u32"), 4e9);

  const kvattn::GgufArray& u8 = f.get_array("a.u8");
  EXPECT_EQ(u8.type, GgufType::UInt8);
  ASSERT_EQ(u8.size, 3u);
  EXPECT_EQ(u8.integer(0), 1);
  EXPECT_EQ(u8.integer(2), 255);
  EXPECT_EQ(u8.number(1), 2.0);
  EXPECT_THROW(u8.number(3), std::out_of_range);
  EXPECT_EQ(f.get_array("a.i8").integer(0), -1);
  EXPECT_EQ(f.get_array("a.i8").integer(2), 127);
  EXPECT_EQ(f.get_array("a.u16").integer(0), 65535);
  EXPECT_EQ(f.get_array("a.u16").integer(1), 7);
  EXPECT_EQ(f.get_array("a.i16").integer(0), -32768);
  EXPECT_EQ(f.get_array("a.u32").integer(0), 4000000000);
  EXPECT_EQ(f.get_array("a.i32").integer(0), -5);
  EXPECT_EQ(f.get_array("a.i32").integer(1), 6);
  EXPECT_EQ(f.get_array("a.f32").type, GgufType::Float32);
  EXPECT_EQ(f.get_array("a.f32").numbers(), (std::vector<double>{0.5, -2.25}));
  EXPECT_THROW(f.get_array("a.f32").integer(0), std::invalid_argument);
  const kvattn::GgufArray& bools = f.get_array("a.bool");
  EXPECT_EQ(bools.type, GgufType::Bool);
  EXPECT_EQ(bools.integer(0), 1);
  EXPECT_EQ(bools.integer(1), 0);
  EXPECT_EQ(bools.integer(2), 1);
  const kvattn::GgufArray& strs = f.get_array("a.str");
  EXPECT_EQ(strs.type, GgufType::String);
  EXPECT_EQ(strs.size, 3u);
  EXPECT_EQ(strs.strings, (std::vector<std::string>{"a", "", "xyz"}));
  EXPECT_THROW(strs.number(0), std::invalid_argument);
  const kvattn::GgufArray& u64 = f.get_array("a.u64");
  EXPECT_EQ(u64.number(0), double(std::numeric_limits<uint64_t>::max()));
  EXPECT_THROW(u64.integer(0), std::out_of_range);
  EXPECT_EQ(f.get_array("a.i64").integer(0), -7);
  EXPECT_EQ(f.get_array("a.f64").number(0), 1e300);
  EXPECT_EQ(f.get_array("a.empty").size, 0u);
  EXPECT_TRUE(f.get_array("a.empty").numbers().empty());

  using E = std::runtime_error;
  test::expect_throw_with<E>([&] { f.get_string("u32"); },
                             {"mem.gguf: metadata u32 has type uint32, expected a string"});
  test::expect_throw_with<E>([&] { f.get_uint("i8"); },
                             {"mem.gguf: metadata i8 = -100 is negative"});
  test::expect_throw_with<E>([&] { f.get_int("u64max"); },
                             {"metadata u64max = 18446744073709551615 does not fit in int64"});
  test::expect_throw_with<E>([&] { f.get_uint("str"); },
                             {"metadata str has type string, expected an integer"});
  test::expect_throw_with<E>([&] { f.get_uint("bool"); },
                             {"metadata bool has type bool, expected an integer"});
  test::expect_throw_with<E>([&] { f.get_float("str"); }, {"expected a number"});
  test::expect_throw_with<E>([&] { f.get_bool("u8"); },
                             {"metadata u8 has type uint8, expected a bool"});
  test::expect_throw_with<E>([&] { f.get_array("f64"); },
                             {"metadata f64 has type float64, expected an array"});
  test::expect_throw_with<E>([&] { f.get_string("a.str"); }, {"a.str has type array"});
  test::expect_throw_with<E>([&] { f.get_uint("missing"); },
                             {"mem.gguf: no metadata key 'missing'"});
}

TEST(GgufReader, ReadsVersion2) {
  EXPECT_EQ(parse(GgufWriter().str("k", "v").bytes(2)).version(), 2u);
}

TEST(GgufReader, TensorsSitAtTheirAlignedOffsets) {
  for (const uint32_t a : {0u, 32u, 64u, 1u}) {  // 0: no general.alignment key, so 32
    SCOPED_TRACE(a);
    GgufWriter w;
    w.str("general.name", "x");  // the infos end off any alignment boundary
    if (a != 0) w.alignment(a);
    const std::string a_data = floats(6, 0.5f);  // [2 x 3]: 0.5, 1.5, ..., 5.5
    std::string b_data;                          // one Q8_0 block: d = 1, q[j] = j
    put<uint16_t>(b_data, 0x3C00);
    for (int j = 0; j < 32; ++j) b_data += char(j);
    w.tensor("a", ggml::F32, {3, 2}, a_data).tensor("b.weight", ggml::Q8_0, {32}, b_data);
    const std::string bytes = w.bytes();
    const GgufFile f = parse(bytes);
    const uint64_t align = a == 0 ? 32 : a;
    EXPECT_EQ(f.alignment(), align);
    EXPECT_EQ(f.size(), uint64_t(bytes.size()));
    EXPECT_EQ(f.data_offset(), (w.infos_end() + align - 1) / align * align);
    ASSERT_EQ(f.tensors().size(), 2u);

    const GgufTensor& ta = f.tensor("a");
    EXPECT_EQ(ta.name, "a");
    EXPECT_EQ(ta.type, uint32_t(ggml::F32));
    EXPECT_EQ(ta.n_dims, 2);
    EXPECT_EQ(ta.dims, (std::array<uint64_t, 4>{{3, 2, 1, 1}}));
    EXPECT_EQ(ta.row_length(), 3u);
    EXPECT_EQ(ta.rows(), 2u);
    EXPECT_EQ(ta.elements(), 6u);
    EXPECT_EQ(ta.bytes, 24u);
    EXPECT_EQ(ta.offset, 0u);
    EXPECT_TRUE(ta.data == f.data() + f.data_offset());
    EXPECT_EQ(std::memcmp(ta.data, a_data.data(), a_data.size()), 0);
    kvattn::RowMatrix<double> m(2, 3);
    kvattn::gguf_dequantize(ta, m.data());
    EXPECT_EQ(m(0, 2), 2.5);
    EXPECT_EQ(m(1, 0), 3.5);  // row 1 starts ne0 = 3 values in

    const GgufTensor& tb = f.tensor("b.weight");
    EXPECT_EQ(tb.type, uint32_t(ggml::Q8_0));
    EXPECT_EQ(tb.n_dims, 1);
    EXPECT_EQ(tb.offset, (24 + align - 1) / align * align);
    EXPECT_EQ(tb.bytes, 34u);
    EXPECT_EQ(tb.rows(), 1u);
    EXPECT_TRUE(tb.data == f.data() + f.data_offset() + tb.offset);
    std::vector<float> x(32);
    kvattn::gguf_dequantize(tb, x.data());
    for (int j = 0; j < 32; ++j) EXPECT_EQ(x[size_t(j)], float(j));

    EXPECT_EQ(f.find_tensor("nope"), nullptr);
    test::expect_throw_with<std::runtime_error>([&] { f.tensor("nope"); },
                                                {"mem.gguf: no tensor 'nope'"});
  }
}

TEST(GgufReader, OpensFilesAndStreams) {
  GgufWriter w;
  w.str("general.architecture", "test").tensor("t", ggml::F32, {4}, floats(4, 1.0f));
  const std::string bytes = w.bytes();
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvattn_gguf_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "t.gguf").string();
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  {
    GgufFile a = GgufFile::open(path);
    EXPECT_EQ(a.name(), path);
    EXPECT_EQ(a.size(), uint64_t(bytes.size()));
    EXPECT_EQ(a.get_string("general.architecture"), "test");
    const unsigned char* data = a.tensor("t").data;
    GgufFile b = std::move(a);  // the mapping moves with the object: views stay valid
    EXPECT_TRUE(b.tensor("t").data == data);
    GgufFile c = parse(small_file());
    c = std::move(b);
    EXPECT_TRUE(c.tensor("t").data == data);
    std::vector<float> x(4);
    kvattn::gguf_dequantize(c.tensor("t"), x.data());
    EXPECT_EQ(x, (std::vector<float>{1, 2, 3, 4}));
  }
  std::istringstream in(bytes);
  const GgufFile s = GgufFile::from_stream(in, "stream");
  EXPECT_EQ(s.name(), "stream");
  EXPECT_EQ(s.get_string("general.architecture"), "test");
  EXPECT_EQ(s.tensors().size(), 1u);

  using E = std::runtime_error;
  const std::string empty = (dir / "empty.gguf").string();
  std::ofstream(empty, std::ios::binary).flush();
  test::expect_throw_with<E>([&] { GgufFile::open(empty); }, {empty + ": truncated: the magic"});
  const std::string missing = (dir / "missing.gguf").string();
  test::expect_throw_with<E>([&] { GgufFile::open(missing); },
                             {missing + ": cannot open: no such file"});
  test::expect_throw_with<E>([&] { GgufFile::open(dir.string()); },
                             {"cannot open: not a regular file"});
  std::filesystem::remove_all(dir);
}

TEST(GgufReader, EveryTruncationIsRejected) {
  for (const std::string& full : {small_file(), every_type_file()}) {
    ASSERT_NO_THROW(parse(full));
    for (size_t n = 0; n < full.size(); ++n) {
      const std::string what = error_of(full.substr(0, n));
      EXPECT_EQ(what.rfind("mem.gguf: ", 0), 0u) << "cut at " << n << ": \"" << what << "\"";
      EXPECT_NE(what.find("truncated"), std::string::npos) << "cut at " << n << ": " << what;
    }
  }
}

TEST(GgufReader, TruncationNamesWhatWasBeingRead) {
  // small_file(), byte by byte:
  //     0 magic, 4 version, 8 tensor count, 16 metadata count;
  //    24 key "general.architecture" (8 + 20 bytes), 52 value type (string),
  //    56 value "llama" (8 + 5);
  //    69 key "s" (8 + 1), 78 value type (array), 82 element type, 86 element count,
  //    94 two float32;
  //   102 tensor name "t" (8 + 1), 111 n_dims, 115 dims[0], 123 type, 127 offset;
  //   135 padding to 160; 160 the tensor's 8 bytes; 168 in all.
  const std::string full = small_file();
  ASSERT_EQ(full.size(), 168u);
  const std::vector<std::pair<size_t, std::string>> cuts = {
      {0, "truncated: the magic"},
      {2, "truncated: the magic at offset 0 needs 4 bytes, only 2 left"},
      {4, "truncated: the version"},
      {8, "truncated: the tensor count"},
      {16, "truncated: the metadata count"},
      {24, "the header says 2 metadata entries"},  // 24 bytes cannot hold two
      {30, "truncated: the length of the key of metadata entry 0"},
      {42, "the key of metadata entry 0 has length 20 at offset 32, but only 10 bytes are left"},
      {52, "truncated: the value type of general.architecture"},
      {56, "truncated: the length of the string value of general.architecture"},
      {66, "the string value of general.architecture has length 5"},
      {69, "truncated: the length of the key of metadata entry 1"},
      {78, "truncated: the value type of s"},
      {82, "truncated: the element type of array s"},
      {86, "truncated: the element count of array s"},
      {98, "array s has 2 elements of type float32 (at least 4 bytes each), but only 4 bytes"},
      {102, "truncated: the length of the name of tensor 0"},
      {111, "truncated: n_dims of tensor t"},
      {115, "truncated: dimension 0 of tensor t"},
      {123, "truncated: the type of tensor t"},
      {127, "truncated: the offset of tensor t"},
      {135,
       "tensor t (2 F32, 8 bytes at offset 0 of the data section, which starts at byte 160) "
       "runs past the end of the 135-byte file"},
      {164, "runs past the end of the 164-byte file"},
  };
  for (const auto& [n, expected] : cuts) expect_rejected(full.substr(0, n), {expected});
}

TEST(GgufReader, RejectsCorruptHeaders) {
  const std::string good = small_file();
  ASSERT_NO_THROW(parse(good));
  expect_rejected(patched(good, 3, 'X'), {"not a GGUF file: it starts with bytes 47 47 55 58"});
  expect_rejected(patched<uint32_t>(good, 4, 4), {"GGUF version 4 is not supported", "2 and 3"});
  expect_rejected(patched<uint32_t>(good, 4, 1), {"GGUF version 1 is not supported"});
  expect_rejected(patched<uint32_t>(good, 4, 0x03000000u), {"big-endian GGUF file (version 3)"});
  expect_rejected(patched<uint64_t>(good, 16, uint64_t(1) << 60),
                  {"the header says 1152921504606846976 metadata entries"});
  expect_rejected(patched<uint64_t>(good, 8, uint64_t(1) << 60),
                  {"the header says 1152921504606846976 tensors"});
}

TEST(GgufReader, RejectsCorruptMetadata) {
  // Lengths and counts past the end, unknown types, bad values, duplicates.
  std::string e;
  put_string(e, "k");
  put<uint32_t>(e, 8);  // string
  put<uint64_t>(e, 1000);
  e += "abc";
  expect_rejected(GgufWriter().raw(e).bytes(),
                  {"the string value of k has length 1000", "only 3 bytes are left"});
  e.clear();
  put<uint64_t>(e, uint64_t(1) << 62);
  e += "abcdef";
  expect_rejected(GgufWriter().raw(e).bytes(),
                  {"the key of metadata entry 0 has length 4611686018427387904"});
  e.clear();
  put_string(e, "a");
  put<uint32_t>(e, 9);  // array
  put<uint32_t>(e, 4);  // of uint32
  put<uint64_t>(e, uint64_t(1) << 40);
  put<uint64_t>(e, 0);
  expect_rejected(GgufWriter().raw(e).bytes(),
                  {"array a has 1099511627776 elements of type uint32", "only 8 bytes are left"});
  e.clear();
  put_string(e, "a");
  put<uint32_t>(e, 9);
  put<uint32_t>(e, 8);  // of strings
  put<uint64_t>(e, 3);
  put_string(e, "x");
  expect_rejected(GgufWriter().raw(e).bytes(), {"array a has 3 elements of type string"});
  e.clear();
  put_string(e, "k");
  put<uint32_t>(e, 13);
  put<uint32_t>(e, 0);
  expect_rejected(GgufWriter().raw(e).bytes(), {"metadata k has unknown value type 13"});
  e.clear();
  put_string(e, "a");
  put<uint32_t>(e, 9);
  put<uint32_t>(e, 13);
  put<uint64_t>(e, 0);
  expect_rejected(GgufWriter().raw(e).bytes(), {"array a has unknown element type 13"});
  e.clear();
  put_string(e, "a");
  put<uint32_t>(e, 9);
  put<uint32_t>(e, 9);  // of arrays
  put<uint64_t>(e, 0);
  expect_rejected(GgufWriter().raw(e).bytes(), {"metadata a is an array of arrays"});
  e.clear();
  put_string(e, "b");
  put<uint32_t>(e, 7);  // bool
  e += '\x02';
  expect_rejected(GgufWriter().raw(e).bytes(), {"metadata b is a bool stored as 2"});
  expect_rejected(GgufWriter().array<uint8_t>("b", GgufType::Bool, {1, 5}).bytes(),
                  {"array b element 1 is a bool stored as 5"});
  expect_rejected(GgufWriter()
                      .scalar<uint32_t>("k", GgufType::UInt32, 1)
                      .scalar<uint32_t>("k", GgufType::UInt32, 2)
                      .bytes(),
                  {"duplicate metadata key 'k' (entries 0 and 1)"});

  // The alignment.
  const auto aligned = [](uint32_t a) {
    return GgufWriter().scalar<uint32_t>("general.alignment", GgufType::UInt32, a).bytes();
  };
  expect_rejected(aligned(48), {"general.alignment = 48 is not a power of two"});
  expect_rejected(aligned(0), {"general.alignment = 0 is not a power of two"});
  expect_rejected(GgufWriter().scalar<uint64_t>("general.alignment", GgufType::UInt64, 64).bytes(),
                  {"general.alignment has type uint64, expected uint32"});
}

TEST(GgufReader, RejectsCorruptTensorInfos) {
  const auto one_info = [](uint32_t n_dims, const std::vector<uint64_t>& dims, uint32_t type,
                           uint64_t offset) {
    return GgufWriter().info("t", n_dims, dims, type, offset).bytes();
  };
  expect_rejected(one_info(5, {1, 1, 1, 1, 1}, ggml::F32, 0),
                  {"tensor t has n_dims = 5, expected 1..4"});
  expect_rejected(one_info(0, {}, ggml::F32, 0), {"tensor t has n_dims = 0, expected 1..4"});
  expect_rejected(one_info(2, {uint64_t(1) << 32, uint64_t(1) << 32}, ggml::F32, 0),
                  {"tensor t has dimensions 4294967296 x 4294967296 whose product overflows"});
  expect_rejected(one_info(2, {uint64_t(1) << 31, uint64_t(1) << 31}, ggml::F32, 0),
                  {"tensor t (2147483648 x 2147483648 F32) has a size in bytes that overflows"});
  expect_rejected(one_info(2, {4, 0}, ggml::F32, 0), {"tensor t has dimension 1 = 0"});
  expect_rejected(one_info(1, {32}, 99, 0), {"tensor t has unknown ggml type 99"});
  expect_rejected(one_info(1, {256}, 12, 0),
                  {"tensor t has ggml type 12 (Q4_K), which kvattn does not read"});
  expect_rejected(one_info(1, {33}, ggml::Q8_0, 0),
                  {"tensor t has row length 33, not a multiple of the Q8_0 block size 32"});
  expect_rejected(one_info(1, {1}, ggml::F32, 4),
                  {"tensor t has offset 4, not a multiple of the alignment 32"});
  expect_rejected(one_info(1, {1}, ggml::F32, uint64_t(1) << 40),
                  {"tensor t", "runs past the end"});
  expect_rejected(GgufWriter().tensor("t", ggml::F32, {4}, floats(2, 0)).bytes(),
                  {"tensor t (4 F32, 16 bytes at offset 0", "runs past the end"});
  expect_rejected(GgufWriter()
                      .tensor("t", ggml::F32, {1}, floats(1, 0))
                      .tensor("t", ggml::F32, {1}, floats(1, 0))
                      .bytes(),
                  {"duplicate tensor name 't' (tensors 0 and 1)"});
}
