//! A small example aggregate, a wallet, used to show that the event store works with cqrs-es
//! unchanged, and to benchmark it against postgres-es with the same commands.

use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// A wallet holding an integer balance in minor units.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    /// Whether the wallet was opened.
    pub opened: bool,
    /// The owner's name.
    pub owner: String,
    /// The balance in minor units.
    pub balance: i64,
    /// How many deposits were made.
    pub deposits: u64,
}

/// What a wallet can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletCommand {
    /// Open the wallet.
    Open {
        /// The owner's name.
        owner: String,
    },
    /// Add money.
    Deposit {
        /// Minor units, above zero.
        amount: i64,
    },
    /// Take money out.
    Withdraw {
        /// Minor units, above zero.
        amount: i64,
    },
}

/// What happened to a wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletEvent {
    /// The wallet was opened.
    Opened {
        /// The owner's name.
        owner: String,
    },
    /// Money was added.
    Deposited {
        /// Minor units.
        amount: i64,
        /// The balance after the deposit.
        balance: i64,
    },
    /// Money was taken out.
    Withdrawn {
        /// Minor units.
        amount: i64,
        /// The balance after the withdrawal.
        balance: i64,
    },
}

impl DomainEvent for WalletEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Opened { .. } => "WalletOpened",
            Self::Deposited { .. } => "MoneyDeposited",
            Self::Withdrawn { .. } => "MoneyWithdrawn",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a wallet refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalletError {
    /// The wallet was already opened.
    AlreadyOpen,
    /// The wallet has not been opened.
    NotOpen,
    /// Amounts must be above zero.
    NonPositiveAmount(i64),
    /// The balance does not cover the withdrawal.
    InsufficientFunds {
        /// The balance.
        balance: i64,
        /// The amount asked for.
        requested: i64,
    },
}

impl fmt::Display for WalletError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyOpen => f.write_str("the wallet is already open"),
            Self::NotOpen => f.write_str("the wallet is not open"),
            Self::NonPositiveAmount(amount) => write!(f, "amount {amount} is not above zero"),
            Self::InsufficientFunds { balance, requested } => {
                write!(f, "balance {balance} does not cover {requested}")
            }
        }
    }
}

impl std::error::Error for WalletError {}

/// A wallet belongs to whichever tenant the command's metadata names.
impl domain::Tenanted for Wallet {
    fn tenant_uuid(&self) -> Option<uuid::Uuid> {
        None
    }
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "Wallet";
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = WalletError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            WalletCommand::Open { owner } => {
                if self.opened {
                    return Err(WalletError::AlreadyOpen);
                }
                sink.write(WalletEvent::Opened { owner }, self).await;
            }
            WalletCommand::Deposit { amount } => {
                if !self.opened {
                    return Err(WalletError::NotOpen);
                }
                if amount <= 0 {
                    return Err(WalletError::NonPositiveAmount(amount));
                }
                let balance = self.balance + amount;
                sink.write(WalletEvent::Deposited { amount, balance }, self)
                    .await;
            }
            WalletCommand::Withdraw { amount } => {
                if !self.opened {
                    return Err(WalletError::NotOpen);
                }
                if amount <= 0 {
                    return Err(WalletError::NonPositiveAmount(amount));
                }
                if amount > self.balance {
                    return Err(WalletError::InsufficientFunds {
                        balance: self.balance,
                        requested: amount,
                    });
                }
                let balance = self.balance - amount;
                sink.write(WalletEvent::Withdrawn { amount, balance }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            WalletEvent::Opened { owner } => {
                self.opened = true;
                self.owner = owner;
            }
            WalletEvent::Deposited { balance, .. } => {
                self.balance = balance;
                self.deposits += 1;
            }
            WalletEvent::Withdrawn { balance, .. } => self.balance = balance,
        }
    }
}
