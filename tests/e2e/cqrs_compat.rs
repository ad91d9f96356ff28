//! cqrs-es compatibility: the example aggregate works through `TestFramework` and through a
//! real `CqrsFramework` over the event store, with snapshots on and off, with upcasters.
