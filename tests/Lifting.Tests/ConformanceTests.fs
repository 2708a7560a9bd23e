module Lifting.Tests.ConformanceTests

open Expecto

[<Tests>]
let tests = testList "ConformanceTests" []
