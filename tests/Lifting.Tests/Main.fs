module Lifting.Tests.Main

open Expecto

/// Runs every [<Tests>] value in this assembly, one test at a time, and ends with one plain line
/// "N passed, N failed", which CI reads.
///
/// Sequenced because of a TorchSharp 0.107 race (docs/engine.md, "A TorchSharp race"): a Scalar
/// made implicitly from a number can be finalised while LibTorch still reads it when another
/// thread triggers a garbage collection during the native call; tests running in parallel make
/// that far more likely. LibTorch still uses every core inside each test.
[<EntryPoint>]
let main argv =
    let mutable counts = None
    let printer =
        { Impl.TestPrinters.defaultPrinter with
            summary = fun config summary ->
                counts <- Some(summary.passed.Length, summary.failed.Length + summary.errored.Length)
                Impl.TestPrinters.defaultPrinter.summary config summary }
    let code = Tests.runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer; CLIArguments.No_Spinner; CLIArguments.Colours 0; CLIArguments.Sequenced ] argv
    match counts with
    | Some(passed, failed) -> printfn "\n%d passed, %d failed" passed failed
    | None -> printfn "\n0 passed, 1 failed"
    code
