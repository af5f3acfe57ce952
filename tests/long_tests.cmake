# Included by CTest after the discovered GoogleTest cases (tests/CMakeLists.txt): labels `long` the
# tests that take seconds rather than milliseconds (several seconds in the release build, tens under
# ASan). `ctest -L long` runs just them, `ctest -LE long` everything else. Those with randomized
# trials run fewer of them under MOECKPT_TEST_TIER=fast (docs/TESTING.md).
set(moeckpt_long_tests
    "^MemoryBound\\."
    "^CrashSafety\\..*KilledAtRandomMoments"
    "^OverwriteSafety\\.AKilledOverwrite"
    "^Distributed\\.KilledWorkers"
    "^Distributed\\.Every"
    "^SignalWhilePlanning\\."
    "^Quantize\\.EqualsFromHfThenToHf$"
    "^Dequantize\\.EqualsFromHfThenToHfNone$"
    "^DeepSeekConversion\\.EveryCommandKeepsEveryValue$"
    "^ConvertCli\\.ReportsProgressPerShardAndASummary$"
    "^NonFinite\\.TheSameScaleOverSmallCodesIsAccepted$")
foreach(test IN LISTS moeckpt_tests_TESTS)
  foreach(pattern IN LISTS moeckpt_long_tests)
    if(test MATCHES "${pattern}")
      set_tests_properties("${test}" PROPERTIES LABELS long)
    endif()
  endforeach()
endforeach()
