module Lifting.Tests.EngineTests

open Expecto

[<Tests>]
let tests = testList "EngineTests" []
