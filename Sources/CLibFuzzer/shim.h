// libFuzzer's driver (compiler-rt, linked by -sanitize=fuzzer): runs the fuzzing loop with the
// given callback and libFuzzer's own command-line flags. Declared here because SwiftPM gives an
// executable its own main(), so libFuzzer's main() is not the entry point.
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));
